//! `gpulse-agent top` as a user meets it: in a real pseudo-terminal (tmux runs it and
//! shows what is on its screen), driven by key presses, and on a pipe.
//!
//! `GPULSE_BLESS=1 cargo test -p gpulse-agent --test top` rewrites docs/top-screen.txt
//! from the screen this test captures.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gpulse-agent");
/// Long enough for a debug build on a busy machine to draw its first screens.
const PATIENCE: Duration = Duration::from_secs(30);
/// The screenshot docs/top.md shows.
const SCREENSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/top-screen.txt");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/top.md");

/// A tmux server of this test's own (its own socket), running one command in a
/// `width` x `height` pane; the server goes when this does.
struct Tmux {
    socket: String,
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `gpulse-agent top` with `args` in a fresh pane. When it exits, the pane's
    /// shell writes its exit status and whether the terminal's settings are as before.
    fn start(args: &str, width: u16, height: u16) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = format!(
            "gpulse-top-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let script = dir.path().join("run.sh");
        std::fs::write(
            &script,
            format!(
                "unset NO_COLOR COLUMNS LINES\n\
                 before=$(stty -g)\n\
                 '{BIN}' top {args}\n\
                 status=$?\n\
                 [ \"$before\" = \"$(stty -g)\" ] && same=restored || same=changed\n\
                 echo \"$status $same\" > '{exit}'\n\
                 exec sleep 600\n",
                exit = dir.path().join("exit").display()
            ),
        )
        .unwrap();
        let tmux = Tmux { socket, dir };
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &format!("sh '{}'", script.display()),
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-u", "-f", "/dev/null", "-L", &self.socket])
            .args(args)
            // UTF-8, so that tmux keeps the screen's signs rather than '_'.
            .env("LANG", "C.UTF-8")
            .env_remove("TMUX")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "tmux is required: run scripts/install-test-deps.sh (Debian package tmux): {e}"
                )
            });
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// What the pane shows now, each line without trailing blanks.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
            .lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect()
    }

    /// Presses keys, in tmux's names ("j", "Enter", "C-c", "Escape").
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend(keys);
        self.run(&args);
    }

    /// The screen once `ready` holds for it; fails with the last screen after
    /// [`PATIENCE`].
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the pane's shell wrote once top exited: its status and whether the
    /// terminal's settings came back.
    fn exit(&self) -> String {
        let path = self.dir.path().join("exit");
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && text.ends_with('\n')
            {
                return text.trim().to_string();
            }
            assert!(
                started.elapsed() < PATIENCE,
                "top did not exit; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id of `top`: the child of the pane's shell.
    fn top_pid(&self) -> String {
        let shell = self.run(&["display-message", "-p", "#{pane_pid}"]);
        let shell = shell.trim();
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        let mut pids = children.split_whitespace();
        let pid = pids.next().expect("top runs in the pane").to_string();
        assert_eq!(pids.next(), None, "one child: {children}");
        pid
    }

    /// Whether the pane is on the alternate screen (a full-screen program's).
    fn alternate_screen(&self) -> bool {
        self.run(&["display-message", "-p", "#{alternate_on}"])
            .trim()
            == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-f", "/dev/null", "-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The GPU table of a screen: its header line and its rows, each with the GPU's
/// index and whether it is the selected one.
struct Table<'a> {
    header: &'a str,
    rows: Vec<(bool, u32, &'a str)>,
}

impl<'a> Table<'a> {
    fn of(screen: &'a str) -> Table<'a> {
        let mut lines = screen.lines().skip_while(|l| !l.contains("SM MHz"));
        let header = lines.next().unwrap_or_default();
        let rows = lines
            .map_while(|l| {
                let (selected, rest) = match l.strip_prefix("▶ ") {
                    Some(rest) => (true, rest),
                    None => (false, l.strip_prefix("  ")?),
                };
                let index = rest.split_whitespace().next()?.parse().ok()?;
                Some((selected, index, l))
            })
            .collect();
        Table { header, rows }
    }

    fn indices(&self) -> Vec<u32> {
        self.rows.iter().map(|(_, i, _)| *i).collect()
    }

    fn selected(&self) -> Option<u32> {
        self.rows.iter().find(|(s, _, _)| *s).map(|(_, i, _)| *i)
    }

    /// The figure in column `name` of each row that has one, in row order ("90/89"
    /// gives 90).
    fn figures(&self, name: &str) -> Vec<u32> {
        let at = self.header.find(name).expect(name);
        self.rows
            .iter()
            .filter_map(|(_, _, line)| {
                let cell: String = line
                    .chars()
                    .skip(self.header[..at].chars().count())
                    .collect();
                cell.split(['/', ' ']).next()?.parse().ok()
            })
            .collect()
    }
}

fn shows_gpus(screen: &str, count: u32) -> bool {
    let mut indices = Table::of(screen).indices();
    indices.sort();
    indices == (0..count).collect::<Vec<_>>()
}

#[test]
fn a_thermal_host_live_sorted_selected_and_quit() {
    let tmux = Tmux::start("--simulate gpus=4,scenario=thermal --rate 250ms", 120, 30);
    let screen = tmux.wait_for("every GPU and the thermal finding", |s| {
        shows_gpus(s, 4) && s.contains("thermal_throttling")
    });
    assert!(tmux.alternate_screen(), "top draws on the alternate screen");
    let table = Table::of(&screen);
    for (_, index, row) in &table.rows {
        assert!(
            row.contains("thermal"),
            "GPU {index}'s throttle reason: {row:?}"
        );
    }
    assert!(
        screen.contains("WARNING  GPUs 0,1,2,3  thermal_throttling"),
        "{screen}"
    );
    assert_eq!(table.selected(), Some(0), "the first row starts selected");
    screenshot(&screen);

    // In index order the rows stay put, so the row below is GPU 1.
    tmux.keys(&["j"]);
    let screen = tmux.wait_for("the row below selected", |s| {
        Table::of(s).selected() == Some(1)
    });
    assert_eq!(Table::of(&screen).indices(), [0, 1, 2, 3], "{screen}");
    let now = 1;

    // Temperatures move between readings, so the order is judged on one screen at a
    // time until one shows it (a screen drawn in the middle of a redraw may not).
    tmux.keys(&["t"]);
    tmux.wait_for("the hottest GPU first", |s| {
        let temps = Table::of(s).figures("TEMP C");
        s.contains("sort: temperature ↓")
            && temps.len() == 4
            && temps.windows(2).all(|w| w[0] >= w[1])
    });
    tmux.wait_for("the selection following GPU 1 wherever it sorts", |s| {
        s.contains("sort: temperature") && Table::of(s).selected() == Some(now)
    });

    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the selected GPU's detail", |s| s.contains("clock events:"));
    assert!(
        screen.contains(&format!("GPU {now}  NVIDIA")),
        "the detail is the selected GPU's:\n{screen}"
    );
    assert!(
        screen.contains(&format!("pid {}", 10_000 + now)) && screen.contains("what to do:"),
        "its processes and findings:\n{screen}"
    );

    tmux.keys(&["q"]);
    assert_eq!(tmux.exit(), "0 restored");
    assert!(!tmux.alternate_screen(), "back on the normal screen");
    assert!(
        !tmux.screen().contains("gpulse top"),
        "the normal screen is as it was:\n{}",
        tmux.screen()
    );
}

#[test]
fn every_quit_key_and_signal_exits_cleanly_and_gives_the_terminal_back() {
    for key in ["C-c", "Escape"] {
        let tmux = Tmux::start("--simulate gpus=2,scenario=idle-held", 100, 30);
        tmux.wait_for("the GPUs", |s| shows_gpus(s, 2));
        tmux.keys(&[key]);
        assert_eq!(tmux.exit(), "0 restored", "{key}");
        assert!(!tmux.alternate_screen(), "{key}");
    }
    // A signal that asks a program to end (kill, a closed terminal) ends top as q does.
    for signal in ["TERM", "HUP"] {
        let tmux = Tmux::start("--simulate gpus=2,scenario=idle-held", 100, 30);
        tmux.wait_for("the GPUs", |s| shows_gpus(s, 2));
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &tmux.top_pid()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert_eq!(tmux.exit(), "0 restored", "SIG{signal}");
        assert!(!tmux.alternate_screen(), "SIG{signal}");
    }
    // Esc with the detail open closes it first.
    let tmux = Tmux::start("--simulate gpus=2,scenario=idle-held", 100, 30);
    tmux.wait_for("the GPUs", |s| shows_gpus(s, 2));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the detail", |s| s.contains("clock events:"));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the detail closed", |s| {
        s.contains("Processes (2)") && !s.contains("clock events:")
    });
    assert!(tmux.alternate_screen(), "still running");
    tmux.keys(&["Escape"]);
    assert_eq!(tmux.exit(), "0 restored");
}

#[test]
fn a_small_terminal_shows_every_gpu_of_an_eight_gpu_host() {
    let tmux = Tmux::start("--simulate gpus=8,scenario=nvlink-errors", 80, 24);
    let screen = tmux.wait_for("all eight GPUs", |s| shows_gpus(s, 8));
    for line in screen.lines() {
        assert!(line.chars().count() <= 80, "{line}");
    }
    assert!(screen.contains("nvlink_down"), "{screen}");
    tmux.keys(&["q"]);
    assert_eq!(tmux.exit(), "0 restored");
}

/// Where docs/top.md shows the screenshot.
const SHOWN_FROM: &str = "<!-- top-screen.txt -->\n```text\n";
const SHOWN_TO: &str = "```\n<!-- /top-screen.txt -->";

/// Writes the screenshot, and docs/top.md's copy of it, when blessing; otherwise
/// checks that it still has the columns the screen has and that docs/top.md shows it.
fn screenshot(screen: &str) {
    let path = Path::new(SCREENSHOT);
    let doc_path = Path::new(DOC);
    // The pane is drawn in full; its blank bottom says nothing.
    let text = format!("{}\n", screen.trim_end());
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let (before, rest) = doc
        .split_once(SHOWN_FROM)
        .expect("docs/top.md marks the screenshot");
    let (shown, after) = rest
        .split_once(SHOWN_TO)
        .expect("docs/top.md ends the screenshot");
    if std::env::var_os("GPULSE_BLESS").is_some() {
        std::fs::write(path, &text).unwrap();
        std::fs::write(
            doc_path,
            format!("{before}{SHOWN_FROM}{text}{SHOWN_TO}{after}"),
        )
        .unwrap();
        return;
    }
    let regenerate = "regenerate with GPULSE_BLESS=1 cargo test -p gpulse-agent --test top";
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let header = Table::of(screen).header;
    assert!(
        committed.contains(header),
        "{} lacks the table's columns {header:?}; {regenerate}",
        path.display()
    );
    assert_eq!(
        shown, committed,
        "docs/top.md shows another screenshot; {regenerate}"
    );
}

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("NO_COLOR")
        .env("COLUMNS", "100")
        .output()
        .unwrap()
}

#[test]
fn without_a_terminal_it_refuses_and_says_what_to_use() {
    let out = agent(&["top", "--simulate", "gpus=1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a terminal")
            && err.contains("top --once")
            && err.contains("diagnose --json"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_settings_name_the_flag_and_the_bounds() {
    for (args, words) in [
        (
            &["--rate", "10ms"][..],
            &["--rate 10ms", "at least 100ms"][..],
        ),
        (&["--window", "0"], &["--window 0", "between 1 and 64"]),
        (&["--window", "65"], &["--window 65", "between 1 and 64"]),
    ] {
        let mut all = vec!["top", "--once", "--simulate", "gpus=1"];
        all.extend(args);
        let out = agent(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    }
}

/// `--once` prints one plain frame: every GPU, process and finding, no escape codes.
fn check_once(out: &Output, gpus: u32, finding: &str) -> String {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains('\x1b'), "{text}");
    assert!(shows_once_gpus(&text, gpus), "{text}");
    assert!(text.contains(finding), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "{line}");
    }
    text
}

/// The rows of `--once`'s table (no selection mark there).
fn shows_once_gpus(text: &str, count: u32) -> bool {
    let indices: Vec<u32> = text
        .lines()
        .skip_while(|l| !l.contains("SM MHz"))
        .skip(1)
        .map_while(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    indices == (0..count).collect::<Vec<_>>()
}

#[test]
fn once_prints_one_frame_from_the_simulator_and_from_a_replay() {
    let out = agent(&[
        "top",
        "--once",
        "--rate",
        "100ms",
        "--simulate",
        "gpus=3,scenario=thermal",
    ]);
    let text = check_once(&out, 3, "thermal_throttling");
    assert!(text.contains("Processes (3)"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let capture: PathBuf = dir.path().join("host.gpulse");
    let recorded = agent(&[
        "capture",
        "--simulate",
        "gpus=2,scenario=pcie-degraded",
        "--duration",
        "500ms",
        "--rate",
        "100ms",
        "--out",
        capture.to_str().unwrap(),
    ]);
    assert!(
        recorded.status.success(),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    let out = agent(&[
        "top",
        "--once",
        "--rate",
        "100ms",
        "--replay",
        capture.to_str().unwrap(),
    ]);
    check_once(&out, 2, "pcie_downtrained");
}
