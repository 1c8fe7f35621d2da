//! Drawing the [`App`]: the message pane, a hint line when there is one, the status bar and
//! the input line. Reads the state, changes nothing.
//!
//! Lines are wrapped here (not by ratatui) so that the app can count rows for scrolling
//! with the same function that draws them: [`entry_rows`].

use std::collections::BTreeSet;

use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::app::{Activity, App, Connection, Entry, Kind};
use crate::client::format::{self, clock, date_time, sanitize, their_clock};

/// The prompt before the input line.
const PROMPT: &str = "> ";

/// Sender colours; each name always gets the same one.
const PALETTE: [Color; 10] = [
    Color::Cyan,
    Color::Green,
    Color::Yellow,
    Color::Magenta,
    Color::LightBlue,
    Color::LightRed,
    Color::LightGreen,
    Color::LightCyan,
    Color::LightMagenta,
    Color::LightYellow,
];

/// Draws the whole screen.
pub fn render(app: &App, frame: &mut Frame) {
    let hint_rows = u16::from(app.hint.is_some());
    let asking_rows = u16::from(app.asking_line().is_some());
    let [pane, hint, asking, status, input] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(hint_rows),
        Constraint::Length(asking_rows),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_pane(app, frame, pane);
    if let Some(text) = &app.hint {
        frame
            .render_widget(Paragraph::new(text.as_str()).style(Style::new().fg(Color::Gray)), hint);
    }
    if let Some(text) = app.asking_line() {
        let style = Style::new().fg(Color::Black).bg(Color::Yellow);
        frame.render_widget(Paragraph::new(text).style(style), asking);
    }
    frame.render_widget(Paragraph::new(status_line(app, status.width)), status);
    render_input(app, frame, input);
}

/// How many rows `entry` takes at `width` columns.
pub fn entry_rows(entry: &Entry, width: usize) -> usize {
    let (spans, indent) = spans(entry, "");
    wrap(spans, width, indent).len()
}

/// The most cells a terminal may give `cluster`: its width, or, for a terminal that draws
/// the code points of an emoji sequence one by one (tmux 3.3), two for each picture, letter
/// of a flag and skin tone, and the width of the rest.
fn widest(cluster: &str) -> usize {
    let apart: usize = cluster
        .chars()
        .map(|c| if u32::from(c) >= 0x1F000 { 2 } else { UnicodeWidthChar::width(c).unwrap_or(0) })
        .sum();
    cluster.width().max(apart)
}

/// The rows of the screen that hold an emoji sequence: a cluster of several code points
/// drawn two cells wide (a flag, a skin tone, a ZWJ family), which terminals measure
/// differently.
pub fn sequence_rows(buffer: &ratatui::buffer::Buffer) -> BTreeSet<u16> {
    let area = buffer.area;
    (area.top()..area.bottom())
        .filter(|&y| (area.left()..area.right()).any(|x| is_sequence(buffer[(x, y)].symbol())))
        .collect()
}

/// Row `y` as the clusters and styles to print one after the other, if it fits the row
/// however far apart a terminal draws the code points (`widest`). The driver prints rows
/// that hold emoji sequences, or held them in the frame before, as such streams, so that
/// the terminal lays each sequence out as it measures it (a thumb and its skin tone side
/// by side in tmux 3.3, where a cell-by-cell update wrote the next cell over the tone, and
/// cleared only part of a flag); the pane's wrapping left the room for it.
pub fn stream(buffer: &ratatui::buffer::Buffer, y: u16) -> Option<Vec<(String, Style)>> {
    let area = buffer.area;
    let mut row = Vec::new();
    let mut skip = 0;
    for x in area.left()..area.right() {
        let cell = &buffer[(x, y)];
        if skip > 0 {
            skip -= 1;
            continue;
        }
        skip = cell.symbol().width().saturating_sub(1);
        row.push((cell.symbol().to_owned(), cell.style()));
    }
    // Trailing blanks are cleared, not printed (the pane has no background).
    while row.last().is_some_and(|(s, _)| s == " ") {
        row.pop();
    }
    let apart: usize = row.iter().map(|(s, _)| widest(s)).sum();
    (apart <= usize::from(area.width)).then_some(row)
}

fn is_sequence(symbol: &str) -> bool {
    symbol.width() == 2 && symbol.chars().nth(1).is_some()
}

/// An entry as plain text, as it is drawn on one row (for `/search`).
pub fn plain(entry: &Entry, me: &str) -> String {
    spans(entry, me).0.iter().map(|s| s.content.as_ref()).collect::<String>().replace('\n', " ")
}

/// An entry as a line of a chat log: its date and time, then the text as drawn, a
/// multi-line message's continuation lines indented by four spaces.
pub fn log_line(entry: &Entry, me: &str) -> String {
    let undated = Entry { at: None, ..entry.clone() };
    let text: String = spans(&undated, me).0.iter().map(|s| s.content.as_ref()).collect();
    let text = text.replace('\n', "\n    ");
    match entry.at {
        Some(at) => format!("{} {text}", date_time(at)),
        None => text,
    }
}

/// The colour of `name`'s messages.
pub fn colour_of(name: &str) -> Color {
    // FNV-1a: stable across runs and platforms.
    let hash = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

fn render_pane(app: &App, frame: &mut Frame, area: Rect) {
    let (width, height) = (usize::from(area.width).max(1), usize::from(area.height));
    // Walk back from the newest entry until the rows in view are collected.
    let window = app.window();
    let want = window.scroll + height;
    let mut rows: Vec<Line<'static>> = Vec::new();
    for entry in window.entries.iter().rev() {
        let (spans, indent) = spans(entry, &app.me);
        let mut lines = wrap(spans, width, indent);
        lines.append(&mut rows);
        rows = lines;
        if rows.len() >= want {
            break;
        }
    }
    let end = rows.len().saturating_sub(window.scroll);
    let start = end.saturating_sub(height);
    let mut visible: Vec<Line<'static>> = rows.drain(start..end).collect();
    // Newest at the bottom: pad above when there are fewer rows than the pane has.
    let padding = height.saturating_sub(visible.len());
    visible.splice(0..0, std::iter::repeat_n(Line::default(), padding));
    frame.render_widget(Paragraph::new(visible), area);
}

fn status_line(app: &App, width: u16) -> Line<'static> {
    let bar = Style::new().bg(Color::Blue).fg(Color::White);
    let (state, state_style) = match &app.connection {
        Connection::Connected => ("connected".to_owned(), bar.fg(Color::LightGreen)),
        Connection::Reconnecting { retry_in, .. } => (
            format!("reconnecting (next try in {} s)", retry_in.as_secs_f64().round().max(1.0)),
            bar.fg(Color::LightYellow),
        ),
        Connection::Ended(why) => (format!("ended: {why}"), bar.fg(Color::LightRed)),
        Connection::Lost(_) if !app.private.is_empty() => {
            ("server gone, private chats still work".to_owned(), bar.fg(Color::LightRed))
        }
        Connection::Lost(_) => ("connection lost".to_owned(), bar.fg(Color::LightRed)),
    };
    let online: Vec<&str> = app.online.keys().map(String::as_str).collect();
    let mut segments: Vec<(String, Style)> = vec![
        (format!(" {}@{}", app.me, app.server), bar.add_modifier(Modifier::BOLD)),
        (state, state_style),
        (format!("{} online", online.len()), bar),
    ];
    if !app.private.is_empty() {
        let peers: Vec<&str> = app.private.iter().map(String::as_str).collect();
        segments.push((format!("private: {}", peers.join(" ")), bar.fg(Color::LightMagenta)));
    }
    let gauges = app.transfer_gauges();
    if !gauges.is_empty() {
        segments.push((gauges.join(" "), bar.fg(Color::LightCyan)));
    }
    if app.window().unread > 0 {
        let unread = app.window().unread;
        segments.push((format!("{unread} unread, PgDn"), bar.fg(Color::LightYellow)));
    }
    let names = format!("[{}]", online.join(" "));
    let total =
        |segs: &[(String, Style)]| segs.iter().map(|(s, _)| s.chars().count() + 3).sum::<usize>();
    let windows = window_list(app, bar, false);
    let room = usize::from(width).saturating_sub(total(&segments));
    let windows =
        if list_width(&windows) + 3 <= room { windows } else { window_list(app, bar, true) };
    let windows_width = if windows.is_empty() { 0 } else { list_width(&windows) + 3 };
    let used = total(&segments) + windows_width;
    if !online.is_empty() && used + names.chars().count() + 3 <= usize::from(width) {
        segments.push((names, bar));
    }
    if total(&segments) + windows_width > usize::from(width) {
        segments[0].0 = format!(" {}", app.me); // narrow: drop the server address
    }
    let mut spans = Vec::new();
    for (i, (text, style)) in segments.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled(" | ", bar));
        }
        spans.push(Span::styled(text, style));
        if i == 0 && !windows.is_empty() {
            // The windows come first: on a narrow screen they matter most.
            spans.push(Span::styled(" | ", bar));
            spans.extend(windows.iter().cloned());
        }
    }
    Line::from(spans).style(bar)
}

/// The window list for the status bar (nothing while the server window is the only one):
/// `[2:bob]` is the window in view; after a name `*` marks new messages and `!` a mention
/// of you, in colour too. `active_only` leaves out the windows with nothing new.
fn window_list(app: &App, bar: Style, active_only: bool) -> Vec<Span<'static>> {
    if app.windows.len() < 2 {
        return Vec::new();
    }
    let mut spans = Vec::new();
    for (i, window) in app.windows.iter().enumerate() {
        let current = i == app.current;
        if active_only && !current && window.activity < Activity::Message {
            continue;
        }
        let label = sanitize(&window.label()).into_owned();
        let (text, style) = match window.activity {
            _ if current => (format!("[{}:{label}]", i + 1), bar.add_modifier(Modifier::BOLD)),
            Activity::Mention => (
                format!("{}:{label}!", i + 1),
                bar.fg(Color::LightMagenta).add_modifier(Modifier::BOLD),
            ),
            Activity::Message => (
                format!("{}:{label}*", i + 1),
                bar.fg(Color::LightYellow).add_modifier(Modifier::BOLD),
            ),
            Activity::Text => (format!("{}:{label}", i + 1), bar),
            Activity::None => (format!("{}:{label}", i + 1), bar.fg(Color::Gray)),
        };
        if !spans.is_empty() {
            spans.push(Span::styled(" ", bar));
        }
        spans.push(Span::styled(text, style));
    }
    spans
}

fn list_width(spans: &[Span<'_>]) -> usize {
    spans.iter().map(|s| s.content.chars().count()).sum()
}

fn render_input(app: &App, frame: &mut Frame, area: Rect) {
    let text = app.input.text();
    let (before, after) = text.split_at(app.input.byte_cursor());
    let avail = usize::from(area.width).saturating_sub(PROMPT.len()).max(1);
    // Scroll the line sideways so the cursor stays in view: keep the clusters before the
    // cursor that fit, walking back from it (one pass, however long the line).
    let mut col = 0;
    let mut start = before.len();
    for (at, cluster) in before.grapheme_indices(true).rev() {
        let w = cell_width(cluster);
        if col + w >= avail {
            break;
        }
        col += w;
        start = at;
    }
    let shown: String = before[start..].chars().chain(after.chars()).map(shown_in_input).collect();
    let line =
        Line::from(vec![Span::styled(PROMPT, Style::new().fg(Color::DarkGray)), Span::raw(shown)]);
    frame.render_widget(Paragraph::new(line), area);
    let x = area.x + (PROMPT.len() + col) as u16;
    frame.set_cursor_position(Position::new(x.min(area.right().saturating_sub(1)), area.y));
}

/// A line break of a multi-line paste shows in the input line as `↵`.
fn shown_in_input(c: char) -> char {
    if c == '\n' {
        '↵'
    } else {
        c
    }
}

/// The cells a grapheme cluster takes, as ratatui's buffer counts them (a flag, a skin
/// tone or a ZWJ family is one cluster of two cells); a line break in the input line is
/// one cell (`↵`).
pub fn cell_width(cluster: &str) -> usize {
    if cluster == "\n" {
        1
    } else {
        cluster.width()
    }
}

/// The styled pieces of one entry, before wrapping, and the columns its prefix takes (time,
/// sender), under which its continuation rows are indented.
fn spans(entry: &Entry, me: &str) -> (Vec<Span<'static>>, usize) {
    let dim = Style::new().fg(Color::DarkGray);
    let name = |n: &str| {
        let style = Style::new().fg(colour_of(n)).add_modifier(Modifier::BOLD);
        Span::styled(
            sanitize(n).into_owned(),
            if n == me { style.add_modifier(Modifier::ITALIC) } else { style },
        )
    };
    let mut out = Vec::new();
    let offline = matches!(
        entry.kind,
        Kind::Message { offline: true, .. } | Kind::Group { offline: true, .. }
    );
    if let Some(at) = entry.at {
        let time = if offline { date_time(at) } else { clock(at) };
        out.push(Span::styled(format!("[{time}] "), dim));
    }
    // Line breaks stay (a multi-line message); every other control character is shown safe.
    let text = entry.text.split('\n').map(sanitize).collect::<Vec<_>>().join("\n");
    match &entry.kind {
        Kind::Message { from, .. } => {
            out.push(name(from));
            out.push(Span::raw(": "));
        }
        Kind::Sent { to } => {
            out.push(name(me));
            out.push(Span::styled(" -> ", dim));
            out.push(name(to));
            out.push(Span::raw(": "));
        }
        Kind::Pending { to, .. } => {
            out.push(Span::styled("(pending) ", dim.add_modifier(Modifier::ITALIC)));
            out.push(name(me));
            out.push(Span::styled(" -> ", dim));
            out.push(Span::raw(sanitize(to).into_owned()));
            out.push(Span::raw(": "));
        }
        Kind::Broadcast { from } => {
            out.push(name(from));
            out.push(Span::styled(" (broadcast)", Style::new().fg(Color::Yellow)));
            out.push(Span::raw(": "));
        }
        Kind::Private { peer, outgoing, sent_at } => {
            let mark = Span::styled(
                "[private] ",
                Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
            );
            out.push(mark);
            if *outgoing {
                out.push(name(me));
                out.push(Span::styled(" -> ", dim));
            }
            out.push(name(peer));
            out.push(Span::raw(": "));
            if let Some(note) = sent_at.zip(entry.at).and_then(|(sent, at)| their_clock(sent, at)) {
                out.push(Span::styled(format!("({note}) "), dim.add_modifier(Modifier::ITALIC)));
            }
        }
        Kind::Group { group, from, .. } => {
            out.push(Span::styled(
                format!("[{}] ", sanitize(group)),
                Style::new().fg(Color::LightBlue),
            ));
            out.push(name(from));
            out.push(Span::raw(": "));
        }
        Kind::Notice => {
            out.push(Span::styled(text, Style::new().fg(Color::Gray)));
            return (out, NOTICE_INDENT);
        }
        Kind::Error => {
            out.push(Span::styled(format::error(text), Style::new().fg(Color::LightRed)));
            return (out, NOTICE_INDENT);
        }
    }
    if offline {
        out.push(Span::styled("(while you were away) ", dim.add_modifier(Modifier::ITALIC)));
    }
    let indent = out.iter().map(|s| s.content.width()).sum();
    out.push(Span::raw(text));
    (out, indent)
}

/// How far the continuation rows of a notice or an error are indented.
const NOTICE_INDENT: usize = 2;

/// One cell's worth of text: a grapheme cluster, its style and its width.
#[derive(Clone)]
struct Cell {
    cluster: String,
    style: Style,
    width: usize,
}

/// Breaks styled spans into rows of at most `width` columns (at least one row), at the last
/// space that fits when there is one, else in the middle of the word, and at each line
/// break. Rows after the first start `indent` columns in (at most half the row), so that a
/// message's continuation sits under its text. Text is cut in grapheme clusters, as ratatui
/// draws it: a flag, a skin tone or a ZWJ family is never split, and is counted as the
/// cells it takes.
fn wrap(spans: Vec<Span<'static>>, width: usize, indent: usize) -> Vec<Line<'static>> {
    let indent = if indent * 2 > width { 0 } else { indent };
    let pad = || vec![Cell { cluster: " ".repeat(indent), style: Style::new(), width: indent }];
    let lead = usize::from(indent > 0); // the padding cell that starts a continuation row
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    let mut row: Vec<Cell> = Vec::new();
    let mut start = 0; // cells at the row's start that are no place to break
    let width_of = |row: &[Cell]| row.iter().map(|c| c.width).sum::<usize>();
    for span in &spans {
        for cluster in span.content.graphemes(true) {
            if cluster == "\n" || cluster == "\r\n" {
                rows.push(std::mem::replace(&mut row, pad()));
                start = lead;
                continue;
            }
            // Room for the widest a terminal may draw it (see `sequence_rows`).
            let w = widest(cluster);
            if width_of(&row) + w > width && row.len() > start {
                // Carry the unfinished word over, if the row has a space to break at and
                // the word fits on the next.
                let carry = match row.iter().rposition(|c| c.cluster == " ") {
                    Some(space) if space > start && indent + width_of(&row[space..]) < width => {
                        let rest = row.split_off(space + 1);
                        row.pop();
                        rest
                    }
                    _ => Vec::new(),
                };
                rows.push(std::mem::replace(&mut row, pad()));
                row.extend(carry);
                start = lead;
            }
            row.push(Cell { cluster: cluster.to_owned(), style: span.style, width: w });
        }
    }
    rows.push(row);
    rows.into_iter().map(|row| line_of(&row)).collect()
}

/// Joins cells back into spans, one per run of the same style.
fn line_of(row: &[Cell]) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    for cell in row {
        match spans.last_mut() {
            Some(last) if last.style == cell.style => last.content.to_mut().push_str(&cell.cluster),
            _ => spans.push(Span::styled(cell.cluster.clone(), cell.style)),
        }
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::command::{self, Target};
    use crate::client::session::SessionEvent;
    use crate::client::tui::app::UiEvent;
    use crate::protocol::{Event, OnlineUser};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::Terminal;

    fn screen(app: &App) -> Vec<String> {
        let (w, h) = app.size;
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| render(app, f)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..h)
            .map(|y| {
                (0..w).map(|x| buffer[(x, y)].symbol()).collect::<String>().trim_end().to_owned()
            })
            .collect()
    }

    fn app(width: u16) -> App {
        let online = vec![
            OnlineUser { name: "bob".into(), since: 0, away: None },
            OnlineUser { name: "carol".into(), since: 0, away: None },
        ];
        App::new("127.0.0.1:4000", "alice", online, (width, 8))
    }

    fn incoming(app: &mut App, text: &str) {
        app.handle(UiEvent::Session(SessionEvent::Server(Event::Message {
            id: 1,
            from: "bob".into(),
            text: text.into(),
            sent_at: 0,
            offline: false,
        })));
        view(app, Target::User("bob".into()));
    }

    /// Brings `target`'s window into view.
    fn view(app: &mut App, target: Target) {
        app.current = app.window_of(&target).expect("the window is open");
    }

    #[test]
    fn the_input_line_survives_an_incoming_message() {
        let mut app = app(60);
        for c in "/msg bob half typed".chars() {
            app.handle(UiEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)));
        }
        let before = screen(&app);
        incoming(&mut app, "hello alice");
        let after = screen(&app);
        assert_eq!(before[7], "> /msg bob half typed");
        assert_eq!(after[7], before[7], "the input line did not move or change");
        assert!(after[5].ends_with("bob: hello alice"), "{after:#?}");
    }

    #[test]
    fn the_status_bar_shows_user_state_and_who_is_online() {
        let wide = screen(&app(100));
        assert!(
            wide[6].contains("alice@127.0.0.1:4000 | connected | 2 online | [bob carol]"),
            "{wide:?}"
        );
        let narrow = screen(&app(40));
        assert!(narrow[6].starts_with(" alice | connected | 2 online"), "{narrow:?}");
    }

    #[test]
    fn long_lines_wrap_and_narrow_screens_stay_readable() {
        let mut app = app(30);
        incoming(&mut app, "a fairly long message that must wrap now");
        let rows = screen(&app);
        let body: Vec<&String> = rows[..6].iter().filter(|r| !r.is_empty()).collect();
        assert_eq!(body.len(), 2, "{rows:#?}");
        assert!(rows.iter().all(|r| r.chars().count() <= 30));
        assert_eq!(entry_rows(app.window().entries.back().unwrap(), 30), 2);
    }

    #[test]
    fn hostile_text_cannot_reach_the_terminal() {
        let mut app = app(60);
        incoming(&mut app, "\x1b[2Jboom");
        assert!(screen(&app).iter().any(|r| r.contains("\u{fffd}[2Jboom")));
    }

    #[test]
    fn invisible_characters_show_as_escapes_on_screen() {
        let mut app = app(80);
        incoming(&mut app, "see \u{202E}fdp.exe and pay\u{200B}pal");
        app.handle(UiEvent::Session(SessionEvent::Private(crate::p2p::PrivateEvent::Message {
            peer: "bob".into(),
            text: "\u{2066}hidden\u{2069}".into(),
            sent_at: 0,
            received_at: 0,
        })));
        let rows = screen(&app);
        assert!(rows[5].ends_with("bob: see <U+202E>fdp.exe and pay<U+200B>pal"), "{rows:#?}");
        view(&mut app, Target::Private("bob".into()));
        let rows = screen(&app);
        assert!(rows[5].ends_with("[private] bob: <U+2066>hidden<U+2069>"), "{rows:#?}");
    }

    #[test]
    fn a_private_message_shows_our_time_and_a_far_off_claim_of_theirs() {
        let mut app = app(100);
        let received_at = 1_800_000_000_000;
        for sent_at in [received_at - 1000, received_at - 3_600_000] {
            app.handle(UiEvent::Session(SessionEvent::Private(
                crate::p2p::PrivateEvent::Message {
                    peer: "bob".into(),
                    text: "hi".into(),
                    sent_at,
                    received_at,
                },
            )));
        }
        view(&mut app, Target::Private("bob".into()));
        let rows = screen(&app);
        let at = clock(received_at);
        assert_eq!(rows[4], format!("[{at}] [private] bob: hi"), "{rows:#?}");
        let note = crate::client::format::their_clock(received_at - 3_600_000, received_at);
        assert_eq!(rows[5], format!("[{at}] [private] bob: ({}) hi", note.unwrap()), "{rows:#?}");
    }

    #[test]
    fn private_chats_show_in_the_status_bar_and_requests_above_the_input() {
        let mut app = app(100);
        app.handle(UiEvent::Session(SessionEvent::Server(Event::PrivateRequest {
            from: "carol".into(),
            expires_in_secs: 60,
        })));
        app.handle(UiEvent::Session(SessionEvent::Private(crate::p2p::PrivateEvent::Opened {
            peer: "bob".into(),
            trust: crate::p2p::identity::PeerTrust::Unverified,
            route: crate::p2p::Route::Direct("192.0.2.1:1".parse().unwrap()),
        })));
        app.handle(UiEvent::Session(SessionEvent::Private(crate::p2p::PrivateEvent::Message {
            peer: "bob".into(),
            text: "psst".into(),
            sent_at: 0,
            received_at: 0,
        })));
        view(&mut app, Target::Private("bob".into()));
        let rows = screen(&app);
        // 8 rows: the pane, the request prompt, the status bar, the input line.
        assert!(rows[4].ends_with("] [private] bob: psst"), "{rows:#?}");
        assert!(rows[5].starts_with("carol asks for a private chat: /accept carol"), "{rows:#?}");
        assert!(rows[6].contains("| private: bob |"), "{rows:#?}");
        assert_eq!(rows[7], ">");
        app.handle(UiEvent::Session(SessionEvent::Replied {
            request: crate::protocol::Request::DeclinePrivate { user: "carol".into() },
            result: Ok(crate::protocol::Reply::Done),
        }));
        assert!(!screen(&app).iter().any(|r| r.starts_with("carol asks")), "answered");
    }

    #[test]
    fn the_status_bar_shows_a_transfer_and_offers_wait_above_the_input() {
        use crate::p2p::transfer::{Direction, Transfer, TransferEvent};
        let mut app = app(100);
        let clip = Transfer {
            id: 1,
            peer: "bob".into(),
            name: "clip.mp4".into(),
            size: 2_000_000,
            direction: Direction::Send,
        };
        let song = Transfer {
            id: 2,
            peer: "carol".into(),
            name: "song.ogg".into(),
            size: 4096,
            direction: Direction::Receive,
        };
        app.handle(UiEvent::Tick(1_000));
        app.handle(UiEvent::Session(SessionEvent::Transfer(TransferEvent::Started {
            transfer: clip.clone(),
            resume_from: 0,
            route: crate::p2p::transfer::Route::Direct("192.0.2.1:1".parse().unwrap()),
        })));
        app.handle(UiEvent::Tick(3_000));
        app.handle(UiEvent::Session(SessionEvent::Transfer(TransferEvent::Progress {
            id: 1,
            direction: Direction::Send,
            done: 900_000,
            total: 2_000_000,
        })));
        app.handle(UiEvent::Session(SessionEvent::Transfer(TransferEvent::Offered {
            transfer: song.clone(),
            resume_from: 0,
            accepting: false,
        })));
        let rows = screen(&app);
        assert!(
            rows[5].starts_with("carol offers song.ogg (4.0 KiB): /acceptfile carol"),
            "{rows:#?}"
        );
        // 900,000 bytes in 2 s: 450,000 a second, 1,100,000 to go.
        assert!(
            rows[6].contains("| ↑clip.mp4 45% 878.9 KiB/1.9 MiB 439.5 KiB/s 3 s left"),
            "{rows:#?}"
        );
        assert_eq!(rows[7], ">");

        app.handle(UiEvent::Session(SessionEvent::Transfer(TransferEvent::Started {
            transfer: song,
            resume_from: 0,
            route: crate::p2p::transfer::Route::Direct("192.0.2.1:1".parse().unwrap()),
        })));
        let rows = screen(&app);
        assert!(!rows.iter().any(|r| r.starts_with("carol offers")), "answered: {rows:#?}");
        assert!(rows[6].contains("3 s left ↓song.ogg 0%"), "{rows:#?}");
        assert_eq!(app.transfer_gauges()[1], "↓song.ogg 0% 0 B/4.0 KiB", "no rate yet");

        app.handle(UiEvent::Tick(5_000));
        app.handle(UiEvent::Session(SessionEvent::Transfer(TransferEvent::Sent {
            transfer: clip,
            stats: Default::default(),
        })));
        let rows = screen(&app);
        assert!(!rows[6].contains("clip.mp4"), "{rows:#?}");
        let summary = "clip.mp4 has been uploaded to bob; in 4.0 s, 488.3 KiB/s";
        assert!(rows.iter().any(|r| r.contains(summary)), "{rows:#?}");
    }

    #[test]
    fn offline_and_group_messages_are_marked_and_a_resize_reflows() {
        let mut app = app(60);
        app.handle(UiEvent::Session(SessionEvent::Server(Event::Message {
            id: 1,
            from: "bob".into(),
            text: "sent while you slept".into(),
            sent_at: 0,
            offline: true,
        })));
        app.handle(UiEvent::Session(SessionEvent::Server(Event::GroupMessage {
            id: 1,
            group: "devs".into(),
            from: "carol".into(),
            text: "standup".into(),
            sent_at: 0,
            offline: false,
        })));
        view(&mut app, Target::User("bob".into()));
        let rows = screen(&app);
        assert!(rows[4].ends_with("] bob: (while you were away) sent while"), "{rows:#?}");
        assert_eq!(rows[5], "you slept", "wrapped at a space");
        view(&mut app, Target::Group("devs".into()));
        let rows = screen(&app);
        assert!(rows[5].ends_with("] [devs] carol: standup"), "{rows:#?}");
        app.handle(UiEvent::Resize { width: 30, height: 6 });
        let rows = screen(&app);
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.chars().count() <= 30));
        assert_eq!(rows[3], "standup", "the newest row stays at the bottom: {rows:#?}");
        let long = wrap(vec![Span::raw("x".repeat(25))], 10, 0);
        assert_eq!(long.len(), 3, "a word longer than the row is broken");
    }

    #[test]
    fn the_status_bar_lists_the_windows_with_their_activity() {
        let mut app = app(100);
        incoming(&mut app, "hi"); // window 2, in view
        app.handle(UiEvent::Session(SessionEvent::Server(Event::GroupMessage {
            id: 2,
            group: "devs".into(),
            from: "carol".into(),
            text: "alice: review please".into(),
            sent_at: 0,
            offline: false,
        })));
        app.handle(UiEvent::Session(SessionEvent::Server(Event::Message {
            id: 3,
            from: "dave".into(),
            text: "lunch?".into(),
            sent_at: 0,
            offline: false,
        })));
        let rows = screen(&app);
        assert!(
            rows[6].contains(
                "alice@127.0.0.1:4000 | 1:server [2:bob] 3:#devs! 4:dave* | connected | 2 online \
                 | [bob carol]"
            ),
            "{rows:#?}"
        );
        let (w, h) = app.size;
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| render(&app, f)).unwrap();
        let buffer = terminal.backend().buffer();
        let x = rows[6].find("3:#devs!").unwrap() as u16;
        assert_eq!(buffer[(x, 6)].fg, Color::LightMagenta, "a mention stands out");
        // Narrow: only the window in view and those with messages.
        app.handle(UiEvent::Resize { width: 40, height: 8 });
        let rows = screen(&app);
        assert!(rows[6].starts_with(" alice | [2:bob] 3:#devs! 4:dave* | "), "{rows:#?}");
        assert!(!rows[6].contains("1:server"), "{rows:#?}");
    }

    /// A skin tone, a flag and a ZWJ family: one cluster of two cells each.
    const EMOJI: [&str; 3] = ["👍🏽", "🇫🇷", "👨‍👩‍👧‍👦"];

    #[test]
    fn emoji_clusters_are_whole_on_screen_and_leave_no_stray_cell() {
        for width in [40u16, 100] {
            let mut app = app(width);
            let text = EMOJI.repeat(4).join(" ");
            incoming(&mut app, &text);
            let mut terminal = Terminal::new(TestBackend::new(width, 8)).unwrap();
            terminal.draw(|f| render(&app, f)).unwrap();
            let buffer = terminal.backend().buffer().clone();
            let mut seen = Vec::new();
            for y in 0..6 {
                let mut x = 0;
                while x < width {
                    let symbol = buffer[(x, y)].symbol();
                    if symbol.width() == 2 {
                        seen.push(symbol.to_owned());
                        assert!(x + 1 < width, "a wide cluster cut at the edge at {width}");
                        x += 1; // the cell it covers
                    }
                    x += 1;
                }
            }
            assert_eq!(seen.len(), 12, "every cluster drawn whole at {width}: {seen:?}");
            for (i, cluster) in seen.iter().enumerate() {
                assert_eq!(cluster, EMOJI[i % 3], "at {width}");
            }
            let rows = screen(&app);
            let wrapped: Vec<&String> = rows[..6].iter().filter(|r| !r.is_empty()).collect();
            // Each row leaves room for a terminal that draws the code points apart (4 cells
            // for a skin tone or a flag, 8 for the family): all on one row at 100.
            assert_eq!(wrapped.len(), if width == 40 { 4 } else { 1 }, "{rows:#?}");
            if width == 40 {
                let under = " ".repeat(clock(0).len() + 8);
                assert!(wrapped[1].starts_with(&under), "continuation under the text");
            }
            // The driver prints those rows as streams, each cluster once; they fit however
            // far apart a terminal draws the code points.
            let rows_with = sequence_rows(&buffer);
            assert_eq!(rows_with.len(), wrapped.len());
            let streams: Vec<_> = rows_with.iter().map(|&y| stream(&buffer, y).unwrap()).collect();
            let first: String = streams[0].iter().map(|(s, _)| s.as_str()).collect();
            let start = format!("[{}] bob: {} {} {}", clock(0), EMOJI[0], EMOJI[1], EMOJI[2]);
            assert!(first.starts_with(&start), "{first:?}");
            let too_wide = Buffer::with_lines([EMOJI[0].repeat(3)]);
            assert!(stream(&too_wide, 0).is_none(), "12 cells apart do not fit 6");
            // New lines scroll the emoji away: the terminal (diffed) keeps no piece of them.
            for i in 0..6 {
                incoming(&mut app, &format!("line {i}"));
            }
            terminal.draw(|f| render(&app, f)).unwrap();
            let after = terminal.backend().buffer();
            for y in 0..6 {
                for x in 0..width {
                    let symbol = after[(x, y)].symbol();
                    assert!(symbol.is_ascii(), "stray {symbol:?} at ({x}, {y}) at {width}");
                }
            }
            assert!(sequence_rows(after).is_empty(), "plain text again: cell-by-cell updates");
        }
    }

    #[test]
    fn a_multi_line_message_breaks_its_lines_under_its_text() {
        let mut app = app(60);
        incoming(&mut app, "first line\nsecond line\n\nafter a blank one");
        let rows = screen(&app);
        let at = clock(0);
        assert_eq!(rows[2], format!("[{at}] bob: first line"), "{rows:#?}");
        assert_eq!(rows[3], format!("{}second line", " ".repeat(at.len() + 8)), "{rows:#?}");
        assert_eq!(rows[4], "", "{rows:#?}");
        assert_eq!(rows[5], format!("{}after a blank one", " ".repeat(at.len() + 8)));
        assert_eq!(entry_rows(app.window().entries.back().unwrap(), 60), 4);
        // A notice wraps under itself too, not at column 0.
        let long = Entry { at: None, kind: Kind::Notice, text: "word ".repeat(20) };
        let (spans, indent) = spans(&long, "alice");
        let lines = wrap(spans, 40, indent);
        assert!(lines[1].to_string().starts_with("  word"), "{lines:?}");
        // An error says "error: " once.
        app.handle(UiEvent::Session(SessionEvent::Error("error: no transfer".into())));
        app.handle(UiEvent::Session(SessionEvent::Error("* sending x failed".into())));
        let rows = screen(&app);
        assert_eq!(rows[4], "error: no transfer", "{rows:#?}");
        assert_eq!(rows[5], "error: sending x failed", "{rows:#?}");
    }

    #[test]
    fn the_input_line_shows_a_paste_and_keeps_the_cursor_on_long_lines() {
        let mut app = app(20);
        app.handle(UiEvent::Paste("one\r\ntwo\n".into()));
        assert_eq!(app.input.text(), "one\ntwo");
        assert_eq!(screen(&app)[7], "> one↵two");
        app.handle(UiEvent::Paste(" 👍🏽".repeat(20)));
        let rows = screen(&app);
        assert!(rows[7].starts_with("> "), "{rows:#?}");
        assert!(rows[7].ends_with("👍🏽"), "the end, where the cursor is, is in view: {rows:#?}");
    }

    #[test]
    fn help_fits_an_80_by_24_screen() {
        let mut app = App::new("127.0.0.1:4000", "alice", vec![], (80, 24));
        for c in "/help".chars() {
            app.handle(UiEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)));
        }
        app.handle(UiEvent::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)));
        let rows = screen(&app);
        let help = command::help(None).unwrap();
        let first = rows.iter().position(|r| *r == help[0]).expect("the top is in view");
        for (i, line) in help.iter().enumerate() {
            assert_eq!(&rows[first + i], line, "one row each, none wrapped: {rows:#?}");
        }
    }

    #[test]
    fn senders_keep_their_colour() {
        assert_eq!(colour_of("bob"), colour_of("bob"));
        let distinct: std::collections::HashSet<_> =
            ["alice", "bob", "carol", "dave", "eve", "mallory"]
                .iter()
                .map(|n| colour_of(n))
                .collect();
        assert!(distinct.len() >= 3);
    }
}
