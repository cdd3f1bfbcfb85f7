//! What each key does in `gpulse-agent top`: the one key map, which the footer and
//! docs/top.md also show.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::SortKey;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Quit,
    /// Closes the detail pane when it is open, else quits.
    Back,
    Up,
    Down,
    First,
    Last,
    ToggleDetail,
    SortBy(SortKey),
    NextSort,
    ReverseSort,
}

/// Every key with what it does, in the order help shows them.
pub const KEYS: [(&str, &str); 8] = [
    ("q, Ctrl-C", "quit"),
    ("Esc", "close the detail pane, or quit"),
    ("Up/Down, k/j", "select the previous/next GPU"),
    ("Home/End, g/G", "select the first/last GPU"),
    ("Enter", "open or close the selected GPU's detail pane"),
    (
        "s",
        "sort by the next column (index, util, temp, power, memory)",
    ),
    (
        "i, u, t, p, m",
        "sort by index, utilisation, temperature, power, memory",
    ),
    ("r", "reverse the sort"),
];

/// The command a key press stands for; `None` for keys that mean nothing here and for
/// releases and repeats of a key, which terminals report differently.
pub fn command(key: KeyEvent) -> Option<Command> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return (key.code == KeyCode::Char('c')).then_some(Command::Quit);
    }
    Some(match key.code {
        KeyCode::Char('q') => Command::Quit,
        KeyCode::Esc => Command::Back,
        KeyCode::Up | KeyCode::Char('k') => Command::Up,
        KeyCode::Down | KeyCode::Char('j') => Command::Down,
        KeyCode::Home | KeyCode::Char('g') => Command::First,
        KeyCode::End | KeyCode::Char('G') => Command::Last,
        KeyCode::Enter => Command::ToggleDetail,
        KeyCode::Char('s') => Command::NextSort,
        KeyCode::Char('r') => Command::ReverseSort,
        KeyCode::Char('i') => Command::SortBy(SortKey::Index),
        KeyCode::Char('u') => Command::SortBy(SortKey::Utilization),
        KeyCode::Char('t') => Command::SortBy(SortKey::Temperature),
        KeyCode::Char('p') => Command::SortBy(SortKey::Power),
        KeyCode::Char('m') => Command::SortBy(SortKey::Memory),
        _ => return None,
    })
}
