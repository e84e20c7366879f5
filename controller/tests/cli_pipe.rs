//! The command line as a Unix tool: a reader that stops early (`palisade crd | head -1`) ends
//! the command quietly, with no panic and no error.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs the binary with `args`, reads one line of its output, closes the pipe, and returns the
/// exit code and standard error.
fn first_line_then_close(args: &[&str]) -> (String, Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start palisade");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    // The reader is dropped here: the pipe is closed while the command still writes.
    let out = child.wait_with_output().expect("wait");
    (
        line,
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    // More than a pipe buffer (64 KiB), so the command is still writing when the pipe closes.
    let whole = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("crd")
        .output()
        .expect("palisade crd");
    assert!(
        whole.stdout.len() > 64 * 1024,
        "{} bytes",
        whole.stdout.len()
    );
    let (line, code, stderr) = first_line_then_close(&["crd"]);
    assert_eq!(line, "---\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
}
