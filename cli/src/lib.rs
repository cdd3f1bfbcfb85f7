//! What gpulse's binaries (gpulse-agent, gpulse-collector) share at their entry point:
//! running `main` on a tokio runtime, a user error printed as one line whatever the
//! environment (no backtrace, each cause once), logging to stderr, a command's output
//! to stdout that stops quietly on a closed pipe, and a warning for environment
//! variables with the binary's prefix that no setting reads. Not a place for anything
//! either binary does after start-up.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::process::ExitCode;

/// Runs `run` on a multi-threaded tokio runtime; an error is printed as one line on
/// stderr and the process exits 1.
pub fn main(run: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (stdout carries what a command prints: JSON, CSV, tables), in colour
/// only on a terminal (journald and log files get plain text), at `RUST_LOG` or info.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Writes a command's output. A reader that closed the pipe early (`| head`) has what it
/// wanted: that is not an error.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// An error and its causes, each cause only when the message before it does not already
/// say it.
pub fn one_line(error: &anyhow::Error) -> String {
    error_chain(error.as_ref())
}

/// [`one_line`] for any error: it and its sources, each only when the message before
/// it does not already say it.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(error);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The environment variables `command` (and its subcommands) read.
pub fn known_env(command: &clap::Command) -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    let mut stack = vec![command];
    while let Some(c) = stack.pop() {
        for arg in c.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.insert(env.to_string_lossy().into_owned());
            }
        }
        stack.extend(c.get_subcommands());
    }
    known
}

/// Warns of each environment variable with `prefix` that no setting of `command`
/// reads: a typo there is otherwise silently ignored.
pub fn warn_unknown_env(command: &clap::Command, prefix: &str) {
    let known = known_env(command);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && !known.contains(name.as_ref()) {
            tracing::warn!(
                variable = %name,
                "{name} is set but no setting reads it; known: {}",
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::anyhow!("port 7431 in use")
            .context("cannot listen on 127.0.0.1:7431: port 7431 in use");
        assert_eq!(
            one_line(&e),
            "cannot listen on 127.0.0.1:7431: port 7431 in use"
        );
        let e = anyhow::anyhow!("no such file").context("cannot read /etc/x");
        assert_eq!(one_line(&e), "cannot read /etc/x: no such file");
    }

    #[test]
    fn the_environment_of_every_subcommand_is_known() {
        let cmd = clap::Command::new("x")
            .arg(clap::Arg::new("a").long("a").env("X_A"))
            .subcommand(clap::Command::new("sub").arg(clap::Arg::new("b").long("b").env("X_B")));
        let known = known_env(&cmd);
        assert!(known.contains("X_A") && known.contains("X_B"), "{known:?}");
    }
}
