//! The `palisade` command line.

pub mod documents;
pub mod facts_args;
#[cfg(feature = "gateway")]
pub mod gateway_cmd;
pub mod output;
pub mod policy_cmd;
pub mod render_cmd;
pub mod run_cmd;
pub mod wait_isolated;

use clap::{Parser, Subcommand};

/// Palisade runs AI agents in hardened Kubernetes sandboxes compiled from one declarative policy.
#[derive(Parser, Debug)]
#[command(name = "palisade", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the Kubernetes objects that would be created for the given policies and sandboxes.
    Render(Box<render_cmd::RenderArgs>),
    /// Check or import policies (AgentPolicy, MXC SandboxPolicy or MXC ContainerConfig).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Print the CustomResourceDefinitions (what crds/ holds).
    Crd,
    /// Run the operator: reconcile AgentSandboxes and AgentPolicies until SIGTERM/SIGINT.
    Run(Box<run_cmd::RunArgs>),
    /// Wait until the pod's NetworkPolicy is enforced (the `isolation-check` init container of
    /// every sandbox pod): exit 0 once a canary the policy denies stops answering, 1 if it
    /// stays reachable.
    WaitIsolated(wait_isolated::WaitIsolatedArgs),
    /// Run the egress gateway: an HTTP proxy that lets each sandbox reach the domain names its
    /// policy allows, on any network plugin, until SIGTERM/SIGINT.
    #[cfg(feature = "gateway")]
    Gateway(Box<gateway_cmd::GatewayArgs>),
}

/// Runs the command; the error is the message for standard error.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Render(args) => render_cmd::run(*args),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            runtime.block_on(run_cmd::run(*args))
        }
        Command::WaitIsolated(args) => wait_isolated::run(args),
        #[cfg(feature = "gateway")]
        Command::Gateway(args) => {
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            runtime.block_on(gateway_cmd::run(*args))
        }
        Command::Crd => {
            let yaml = crate::api::crd::crds_yaml().map_err(|e| e.to_string())?;
            output::emit(&yaml)
        }
    }
}
