//! A real headless Chromium for page tests (scripts/install-test-deps.sh installs it):
//! the DOM after the page's scripts ran, and screenshots. Each browser has its own
//! temporary profile, so cookies and cache do not leak between tests.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// A headless Chromium with a fresh profile.
pub struct Chromium {
    profile: tempfile::TempDir,
    window: String,
}

impl Chromium {
    pub fn new(width: u32, height: u32) -> Chromium {
        Chromium {
            profile: tempfile::tempdir().expect("a temporary profile directory"),
            window: format!("--window-size={width},{height}"),
        }
    }

    fn command(&self, url: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(&self.window)
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(extra)
            .arg(url);
        c
    }

    fn checked(out: std::io::Result<Output>) -> String {
        let out = out.expect(
            "chromium is required: run scripts/install-test-deps.sh (Debian package chromium)",
        );
        assert!(
            out.status.success(),
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The DOM once the page loaded and its scripts ran.
    pub fn dump_dom(&self, url: &str, extra: &[&str]) -> String {
        let mut args = vec!["--dump-dom"];
        args.extend_from_slice(extra);
        Self::checked(self.command(url, &args).output())
    }

    /// Starts a DOM dump without waiting for it: with `--virtual-time-budget`, Chromium
    /// waits for open requests (an event stream) to end before it dumps.
    pub fn spawn_dump_dom(&self, url: &str, virtual_time_ms: u64) -> Child {
        let budget = format!("--virtual-time-budget={virtual_time_ms}");
        self.command(url, &["--dump-dom", &budget])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is required: run scripts/install-test-deps.sh")
    }

    /// The output of a spawned dump.
    pub fn finish(child: Child) -> String {
        Self::checked(child.wait_with_output())
    }

    /// A PNG of the page once loaded, written to `file`; its bytes.
    pub fn screenshot(&self, url: &str, file: &Path) -> Vec<u8> {
        Self::checked(
            self.command(url, &[&format!("--screenshot={}", file.display())])
                .output(),
        );
        std::fs::read(file).expect("chromium wrote the screenshot")
    }
}

/// The opening tags in `html` that carry `class="<class>"` as their first attribute,
/// each as its attributes (name to value).
pub fn elements(
    html: &str,
    tag: &str,
    class: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    let open = format!("<{tag} class=\"{class}\"");
    html.match_indices(&open)
        .map(|(at, _)| {
            let end = html[at..].find('>').map_or(html.len(), |e| at + e);
            attributes(&html[at + tag.len() + 1..end])
        })
        .collect()
}

/// `name="value"` pairs of one opening tag (as Chromium serialises them: double quotes,
/// `&quot;` inside).
pub fn attributes(tag: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let after = &rest[eq + 2..];
        let close = after.find('"').unwrap_or(after.len());
        out.insert(
            name,
            after[..close]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        );
        rest = &after[(close + 1).min(after.len())..];
    }
    out
}
