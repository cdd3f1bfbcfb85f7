//! The live screen: the terminal in full-screen raw mode for as long as `top` runs and
//! given back as it was however `top` ends, readings from a thread of their own so
//! that a slow GPU never holds up a key press, and the loop that draws.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event};

use gpulse_gpu::{GpuBackend, Snapshot};

use super::TopError;
use super::keys;
use super::state::{Flow, Top};
use super::view::{self, Look};
use crate::sampler::now_unix_ms;

/// How long the loop waits for a key before it looks for a new reading: short enough
/// that a reading shows at once, long enough to cost nothing.
const KEY_WAIT: Duration = Duration::from_millis(50);

/// The terminal in full-screen raw mode; dropping it gives the terminal back. A panic
/// gives it back too: ratatui's panic hook restores it before the message prints.
struct FullScreen {
    terminal: DefaultTerminal,
}

impl FullScreen {
    fn enter() -> Result<FullScreen, TopError> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(FullScreen { terminal }),
            Err(source) => {
                // Raw mode may be on though the alternate screen failed.
                let _ = ratatui::try_restore();
                Err(TopError::Terminal { source })
            }
        }
    }
}

impl Drop for FullScreen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Reads every GPU every `rate` on a thread of its own and sends each reading, until
/// the receiver is gone.
fn spawn_readings(mut backend: Box<dyn GpuBackend>, rate: Duration) -> mpsc::Receiver<Snapshot> {
    // One reading in flight at most: a screen that cannot keep up sees the newest.
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut next = std::time::Instant::now();
        loop {
            let at = now_unix_ms();
            let snapshot = Snapshot {
                timestamp_unix_ms: at,
                gpus: backend.sample(at),
            };
            if tx.send(snapshot).is_err() {
                return;
            }
            next += rate;
            if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            } else {
                // Reading took longer than the rate: start again from now, not in a burst.
                next = std::time::Instant::now();
            }
        }
    });
    rx
}

/// A flag raised by the signals that ask a program to end (`kill`, a closed terminal,
/// SIGINT or SIGQUIT sent from elsewhere): left to their default, they would end `top`
/// with the terminal still raw.
fn ending_signals() -> Result<Arc<AtomicBool>, TopError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let raised = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
        signal_hook::flag::register(signal, Arc::clone(&raised))
            .map_err(|source| TopError::Terminal { source })?;
    }
    Ok(raised)
}

/// Runs the live screen until the user quits or a signal asks it to end.
pub fn run(mut top: Top, backend: Box<dyn GpuBackend>, look: Look) -> Result<(), TopError> {
    let ending = ending_signals()?;
    let readings = spawn_readings(backend, top.rate());
    let mut screen = FullScreen::enter()?;
    let mut dirty = true;
    loop {
        if ending.load(Ordering::Relaxed) {
            return Ok(());
        }
        if dirty {
            screen
                .terminal
                .draw(|frame| {
                    let area = frame.area();
                    view::render(&top, &look, area, frame.buffer_mut());
                })
                .map_err(|source| TopError::Terminal { source })?;
            dirty = false;
        }
        if event::poll(KEY_WAIT).map_err(|source| TopError::Terminal { source })? {
            match event::read().map_err(|source| TopError::Terminal { source })? {
                Event::Key(key) => {
                    if let Some(command) = keys::command(key) {
                        if top.command(command) == Flow::Quit {
                            return Ok(());
                        }
                        dirty = true;
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        loop {
            match readings.try_recv() {
                Ok(snapshot) => {
                    top.apply(snapshot);
                    dirty = true;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Err(TopError::ReadingsStopped),
            }
        }
    }
}
