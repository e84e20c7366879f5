use clap::Parser;

fn main() {
    let cli = palisade::cli::Cli::parse();
    if let Err(message) = palisade::cli::run(cli) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
