//! `promtool check metrics`, the Prometheus project's own lint of an exposition
//! (Debian's `prometheus` package, installed by scripts/install-test-deps.sh).

use std::io::Write;
use std::process::{Command, Stdio};

/// What `promtool check metrics` finds wrong in `text`: empty when nothing. Fails the
/// test when promtool cannot run or fails for another reason than lint findings.
pub fn report(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is required: run scripts/install-test-deps.sh (Debian package prometheus)",
        );
    child
        .stdin
        .take()
        .expect("promtool's stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the exposition");
    let out = child.wait_with_output().expect("promtool ends");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit status 3 means lint problems (listed); anything else is a failure to run.
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "promtool check metrics failed: {report}"
    );
    report
}

/// Requires `promtool check metrics` to find nothing wrong in `text`.
pub fn check(text: &str) {
    let report = report(text);
    assert!(report.trim().is_empty(), "promtool check metrics: {report}");
}
