//! The input line: a small readline-style editor. Pure: keys in, text and cursor out.
//!
//! The cursor is a char index into the line. Killed text (Ctrl-K, Ctrl-U, Ctrl-W, Alt-D)
//! goes to a one-entry kill buffer that Ctrl-Y yanks back. Submitted lines go to a history
//! that Up and Down walk through; the line being typed is kept while browsing and comes
//! back at the end.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use unicode_segmentation::UnicodeSegmentation;

/// The most lines kept in the input history.
pub const HISTORY_LIMIT: usize = 500;

/// A line being edited, with history and a kill buffer.
#[derive(Debug, Default, Clone)]
pub struct LineEditor {
    chars: Vec<char>,
    cursor: usize,
    kill: String,
    history: Vec<String>,
    /// While browsing: which history entry is shown, and the line typed before browsing.
    browsing: Option<(usize, String)>,
}

/// What a key did to the editor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// The key changed the line or the cursor (or nothing, but was an editing key).
    Changed,
    /// Enter: this line was submitted and the editor is empty again.
    Submitted(String),
    /// The editor does not handle this key.
    Ignored,
}

impl LineEditor {
    /// The current text.
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// The cursor position, in chars from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Whether the line is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Replaces the line and puts the cursor at its end.
    pub fn set(&mut self, text: &str) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
    }

    /// The submitted lines, oldest first.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Starts with `lines` as the history (from an earlier run), oldest first.
    pub fn set_history(&mut self, mut lines: Vec<String>) {
        let excess = lines.len().saturating_sub(HISTORY_LIMIT);
        lines.drain(..excess);
        self.history = lines;
        self.browsing = None;
    }

    /// The cursor position, in bytes into [`text`](Self::text).
    pub fn byte_cursor(&self) -> usize {
        self.chars[..self.cursor].iter().map(|c| c.len_utf8()).sum()
    }

    /// The text before the cursor.
    pub fn before_cursor(&self) -> String {
        self.chars[..self.cursor].iter().collect()
    }

    /// Replaces the text before the cursor with `text`, keeping what follows.
    pub fn replace_before_cursor(&mut self, text: &str) {
        let rest = self.chars.split_off(self.cursor);
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
        self.chars.extend(rest);
    }

    /// Inserts text at the cursor (typing or a paste; control characters become spaces).
    pub fn insert(&mut self, text: &str) {
        for c in text.chars() {
            let c = if c.is_control() { ' ' } else { c };
            self.chars.insert(self.cursor, c);
            self.cursor += 1;
        }
    }

    /// Inserts pasted text at the cursor: its line breaks (`\r\n`, `\r` or `\n`) stay, as
    /// `\n`, so that a paste of several lines is one multi-line message; trailing breaks
    /// are dropped and every other control character becomes a space.
    pub fn paste(&mut self, text: &str) {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        for c in text.trim_end_matches('\n').chars() {
            let c = if c.is_control() && c != '\n' { ' ' } else { c };
            self.chars.insert(self.cursor, c);
            self.cursor += 1;
        }
    }

    /// Applies one key.
    pub fn key(&mut self, key: KeyEvent) -> Edit {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Enter => return self.submit(),
            KeyCode::Char(c) if ctrl => match c {
                'a' => self.cursor = 0,
                'e' => self.cursor = self.chars.len(),
                'b' => self.cursor = self.cluster_before(),
                'f' => self.cursor = self.cluster_after(),
                'h' => self.backspace(),
                'd' if !self.chars.is_empty() => self.delete(),
                'k' => self.kill_range(self.cursor, self.chars.len()),
                'u' => self.kill_range(0, self.cursor),
                'w' => self.kill_range(self.word_start(), self.cursor),
                'y' => self.insert(&self.kill.clone()),
                'p' => self.history_back(),
                'n' => self.history_forward(),
                _ => return Edit::Ignored,
            },
            KeyCode::Char(c) if alt => match c {
                'b' => self.cursor = self.word_start(),
                'f' => self.cursor = self.word_end(),
                'd' => self.kill_range(self.cursor, self.word_end()),
                _ => return Edit::Ignored,
            },
            KeyCode::Char(c) => self.insert(c.encode_utf8(&mut [0; 4])),
            KeyCode::Backspace if alt => self.kill_range(self.word_start(), self.cursor),
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Left if ctrl || alt => self.cursor = self.word_start(),
            KeyCode::Right if ctrl || alt => self.cursor = self.word_end(),
            KeyCode::Left => self.cursor = self.cluster_before(),
            KeyCode::Right => self.cursor = self.cluster_after(),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.chars.len(),
            KeyCode::Up => self.history_back(),
            KeyCode::Down => self.history_forward(),
            _ => return Edit::Ignored,
        }
        Edit::Changed
    }

    fn submit(&mut self) -> Edit {
        let line = self.text();
        self.chars.clear();
        self.cursor = 0;
        self.browsing = None;
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > HISTORY_LIMIT {
                self.history.remove(0);
            }
        }
        Edit::Submitted(line)
    }

    fn backspace(&mut self) {
        let from = self.cluster_before();
        self.chars.drain(from..self.cursor);
        self.cursor = from;
    }

    fn delete(&mut self) {
        let to = self.cluster_after();
        self.chars.drain(self.cursor..to);
    }

    /// Where the grapheme cluster before the cursor starts (a flag, a skin tone or a ZWJ
    /// family is one step, one deletion).
    fn cluster_before(&self) -> usize {
        let before: String = self.chars[..self.cursor].iter().collect();
        let last = before.graphemes(true).next_back().map_or(0, |g| g.chars().count());
        self.cursor - last
    }

    /// Where the grapheme cluster after the cursor ends.
    fn cluster_after(&self) -> usize {
        let after: String = self.chars[self.cursor..].iter().collect();
        let next = after.graphemes(true).next().map_or(0, |g| g.chars().count());
        self.cursor + next
    }

    fn kill_range(&mut self, from: usize, to: usize) {
        if from < to {
            self.kill = self.chars.drain(from..to).collect();
            self.cursor = from;
        }
    }

    /// Start of the word at or before the cursor.
    fn word_start(&self) -> usize {
        let mut i = self.cursor;
        while i > 0 && self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    /// End of the word at or after the cursor.
    fn word_end(&self) -> usize {
        let mut i = self.cursor;
        while i < self.chars.len() && self.chars[i].is_whitespace() {
            i += 1;
        }
        while i < self.chars.len() && !self.chars[i].is_whitespace() {
            i += 1;
        }
        i
    }

    fn history_back(&mut self) {
        let index = match &self.browsing {
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
            None if self.history.is_empty() => return,
            None => {
                self.browsing = Some((self.history.len(), self.text()));
                self.history.len() - 1
            }
        };
        if let Some((i, _)) = &mut self.browsing {
            *i = index;
        }
        let line = self.history[index].clone();
        self.set(&line);
    }

    fn history_forward(&mut self) {
        let Some((i, typed)) = self.browsing.take() else { return };
        if i + 1 < self.history.len() {
            self.browsing = Some((i + 1, typed));
            let line = self.history[i + 1].clone();
            self.set(&line);
        } else {
            self.set(&typed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn alt(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::ALT)
    }

    fn typed(text: &str) -> LineEditor {
        let mut e = LineEditor::default();
        for c in text.chars() {
            e.key(key(KeyCode::Char(c)));
        }
        e
    }

    #[test]
    fn typing_moving_and_deleting() {
        let mut e = typed("/msg bob hi");
        e.key(key(KeyCode::Left));
        e.key(key(KeyCode::Left));
        e.key(key(KeyCode::Char('X')));
        assert_eq!((e.text().as_str(), e.cursor()), ("/msg bob Xhi", 10));
        e.key(key(KeyCode::Backspace));
        e.key(key(KeyCode::Delete));
        assert_eq!(e.text(), "/msg bob i");
        e.key(ctrl('a'));
        e.key(key(KeyCode::Delete));
        e.key(ctrl('e'));
        assert_eq!((e.text().as_str(), e.cursor()), ("msg bob i", 9));
        e.key(key(KeyCode::Home));
        e.key(key(KeyCode::Backspace));
        assert_eq!(e.cursor(), 0, "backspace at the start does nothing");
    }

    #[test]
    fn kill_and_yank() {
        let mut e = typed("/msg bob hello there");
        e.key(ctrl('w'));
        assert_eq!(e.text(), "/msg bob hello ");
        e.key(ctrl('y'));
        assert_eq!(e.text(), "/msg bob hello there");
        e.key(alt('b'));
        e.key(alt('b'));
        assert_eq!(e.cursor(), 9);
        e.key(ctrl('k'));
        assert_eq!(e.text(), "/msg bob ");
        e.key(ctrl('u'));
        assert!(e.is_empty());
        e.key(ctrl('y'));
        assert_eq!(e.text(), "/msg bob ");
        e.key(ctrl('a'));
        e.key(alt('d'));
        assert_eq!(e.text(), " bob ");
        e.key(alt('f'));
        assert_eq!(e.cursor(), 4);
    }

    #[test]
    fn history_walks_back_and_returns_to_the_typed_line() {
        let mut e = LineEditor::default();
        for line in ["/list", "/msg bob a", "/msg bob a", "   "] {
            e.set(line);
            assert_eq!(e.key(key(KeyCode::Enter)), Edit::Submitted(line.into()));
        }
        e.insert("draft");
        e.key(key(KeyCode::Up));
        assert_eq!(e.text(), "/msg bob a", "duplicates and blank lines are not kept");
        e.key(key(KeyCode::Up));
        assert_eq!(e.text(), "/list");
        e.key(key(KeyCode::Up));
        assert_eq!(e.text(), "/list", "stops at the oldest");
        e.key(key(KeyCode::Down));
        e.key(key(KeyCode::Down));
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn pasted_control_characters_become_spaces_and_unicode_is_kept() {
        let mut e = LineEditor::default();
        e.insert("a\nb\x1b[2Jé✓");
        assert_eq!(e.text(), "a b [2Jé✓");
        e.key(key(KeyCode::Backspace));
        assert_eq!(e.text(), "a b [2Jé");
    }

    #[test]
    fn replace_before_cursor_keeps_the_rest() {
        let mut e = typed("/msg bo tail");
        e.key(ctrl('a'));
        for _ in 0..7 {
            e.key(key(KeyCode::Right));
        }
        e.replace_before_cursor("/msg bob ");
        assert_eq!((e.text().as_str(), e.cursor()), ("/msg bob  tail", 9));
    }

    #[test]
    fn the_cursor_steps_over_whole_grapheme_clusters() {
        let mut e = LineEditor::default();
        e.insert("a👍🏽🇫🇷👨\u{200D}👩\u{200D}👧b");
        e.key(key(KeyCode::Left));
        e.key(key(KeyCode::Left));
        assert_eq!(e.before_cursor(), "a👍🏽🇫🇷", "the family is one step");
        e.key(key(KeyCode::Backspace));
        assert_eq!(e.text(), "a👍🏽👨\u{200D}👩\u{200D}👧b", "the flag goes whole");
        e.key(key(KeyCode::Left));
        e.key(key(KeyCode::Delete));
        assert_eq!(e.text(), "a👨\u{200D}👩\u{200D}👧b", "the tone goes with its thumb");
        e.key(key(KeyCode::Right));
        assert_eq!(e.before_cursor(), "a👨\u{200D}👩\u{200D}👧");
    }

    #[test]
    fn a_paste_keeps_its_line_breaks_and_nothing_else_of_control() {
        let mut e = LineEditor::default();
        e.paste("one\r\ntwo\rthree\tfour\x1b\n\n");
        assert_eq!(e.text(), "one\ntwo\nthree four ");
        assert_eq!(e.key(key(KeyCode::Enter)), Edit::Submitted("one\ntwo\nthree four ".into()));
    }
}
