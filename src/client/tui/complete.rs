//! Tab completion of commands, usernames, group names and file paths. Pure: the directory
//! listing comes in as a function.
//!
//! What a word completes to follows the command's argument list in
//! [`COMMANDS`](crate::client::command::COMMANDS): `USER` gives usernames, `NAME` (of the
//! group commands) group names, `USER-or-GROUP` both, `FILE` paths and `COMMAND` commands.
//! One match is completed with a space after it (a `/` after a directory); several are
//! completed as far as they agree and listed.

use crate::client::command::{lookup, COMMANDS};

/// What a Tab press produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The new text before the cursor.
    pub before_cursor: String,
    /// The matches, when there was more than one.
    pub candidates: Vec<String>,
}

/// A directory entry offered for path completion: its name and whether it is a directory.
pub type DirEntry = (String, bool);

/// Completes the last word of `before_cursor`; `None` if nothing matches.
pub fn complete(
    before_cursor: &str,
    users: &[String],
    groups: &[String],
    list_dir: impl Fn(&str) -> Vec<DirEntry>,
) -> Option<Completion> {
    let word_start = before_cursor.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let (head, word) = before_cursor.split_at(word_start);
    let mut words = head.split_whitespace();
    let Some(command) = words.next() else {
        let names = COMMANDS
            .iter()
            .flat_map(|spec| std::iter::once(spec.name).chain(spec.aliases.iter().copied()))
            .filter(|name| name.starts_with('/') || !word.starts_with('/'));
        return finish(head, word, names.map(str::to_owned).collect(), " ");
    };
    let spec = lookup(command)?;
    let index = words.count();
    let kind = spec.args.split_whitespace().nth(index).or_else(|| {
        // A repeated last argument ("USER...") covers every later word.
        spec.args.split_whitespace().last().filter(|a| a.ends_with("..."))
    })?;
    let names = |list: &[String]| list.iter().filter(|n| n.starts_with(word)).cloned().collect();
    match kind.trim_matches(['[', ']']).trim_end_matches("...") {
        "USER" => finish(head, word, names(users), " "),
        "NAME" if spec.name.contains("group") => finish(head, word, names(groups), " "),
        "USER-or-GROUP" => {
            let mut both: Vec<String> = names(users);
            both.extend(names(groups));
            finish(head, word, both, " ")
        }
        "COMMAND" => {
            let all = COMMANDS.iter().map(|s| s.name.trim_start_matches('/').to_owned());
            finish(head, word, all.filter(|n| n.starts_with(word)).collect(), " ")
        }
        "FILE" => complete_path(head, word, list_dir),
        _ => None,
    }
}

/// Completes the last word of a message being typed (not a command) from `users`, as irssi
/// completes nicks: the first word of the line gets `: ` after it, a later one a space.
pub fn complete_name(before_cursor: &str, users: &[String]) -> Option<Completion> {
    let word_start = before_cursor.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let (head, word) = before_cursor.split_at(word_start);
    if word.is_empty() {
        return None;
    }
    let end = if head.trim().is_empty() { ": " } else { " " };
    let matches = users.iter().filter(|u| u.starts_with(word)).cloned().collect();
    finish(head, word, matches, end)
}

fn complete_path(
    head: &str,
    word: &str,
    list_dir: impl Fn(&str) -> Vec<DirEntry>,
) -> Option<Completion> {
    let (dir, prefix) = match word.rfind('/') {
        Some(i) => word.split_at(i + 1),
        None => ("", word),
    };
    let listing = list_dir(if dir.is_empty() { "." } else { dir });
    let mut matches: Vec<&DirEntry> = listing
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .filter(|(name, _)| !name.starts_with('.') || prefix.starts_with('.'))
        .collect();
    matches.sort();
    if let [(name, is_dir)] = matches.as_slice() {
        let end = if *is_dir { "/" } else { " " };
        return Some(Completion {
            before_cursor: format!("{head}{dir}{name}{end}"),
            candidates: vec![],
        });
    }
    let names: Vec<String> = matches.iter().map(|(name, _)| name.clone()).collect();
    let common = common_prefix(&names)?;
    Some(Completion { before_cursor: format!("{head}{dir}{common}"), candidates: names })
}

/// Completes `word` (preceded by `head`) from `matches`, all of which start with it.
fn finish(head: &str, word: &str, mut matches: Vec<String>, end: &str) -> Option<Completion> {
    matches.retain(|m| m.starts_with(word));
    matches.sort();
    matches.dedup();
    match matches.as_slice() {
        [] => None,
        [only] => {
            Some(Completion { before_cursor: format!("{head}{only}{end}"), candidates: vec![] })
        }
        _ => {
            let common = common_prefix(&matches)?;
            Some(Completion { before_cursor: format!("{head}{common}"), candidates: matches })
        }
    }
}

fn common_prefix(names: &[String]) -> Option<String> {
    let first = names.first()?;
    let mut len = first.len();
    for name in &names[1..] {
        len = first
            .char_indices()
            .zip(name.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8())
            .min(len);
    }
    Some(first[..len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<String> {
        ["alice", "bob", "bobby", "carol"].map(String::from).to_vec()
    }

    fn groups() -> Vec<String> {
        vec!["devs".into(), "design".into()]
    }

    fn no_files(_: &str) -> Vec<DirEntry> {
        vec![]
    }

    fn done(line: &str) -> Option<String> {
        complete(line, &users(), &groups(), no_files).map(|c| c.before_cursor)
    }

    #[test]
    fn commands_complete_from_the_table() {
        assert_eq!(done("/creat").as_deref(), Some("/creategroup "));
        assert_eq!(done("/lo").as_deref(), Some("/logout "));
        assert_eq!(done("/j").as_deref(), Some("/joingroup "));
        let many = complete("/b", &users(), &groups(), no_files).unwrap();
        assert_eq!(many.before_cursor, "/b");
        assert!(many.candidates.contains(&"/broadcast".to_string()));
        assert!(many.candidates.contains(&"/block".to_string()));
        assert_eq!(done("/nothing"), None);
    }

    #[test]
    fn arguments_complete_by_kind() {
        assert_eq!(done("/msg a").as_deref(), Some("/msg alice "));
        assert_eq!(done("/msg bo").as_deref(), Some("/msg bob"), "bob and bobby agree on bob");
        assert_eq!(done("/msg alice hel"), None, "message text is not completed");
        assert_eq!(done("/joingroup dev").as_deref(), Some("/joingroup devs "));
        assert_eq!(done("/groupmsg de").as_deref(), Some("/groupmsg de"));
        assert_eq!(done("/history c").as_deref(), Some("/history carol "));
        assert_eq!(done("/history des").as_deref(), Some("/history design "));
        assert_eq!(
            done("/creategroup team bob c").as_deref(),
            Some("/creategroup team bob carol ")
        );
        assert_eq!(done("/help bro").as_deref(), Some("/help broadcast "));
        assert_eq!(done("whoelsesince 1"), None);
    }

    #[test]
    fn paths_complete_through_the_listing() {
        let list = |dir: &str| -> Vec<DirEntry> {
            match dir {
                "." => vec![
                    ("clip.mp4".into(), false),
                    ("clips".into(), true),
                    (".hidden".into(), false),
                ],
                "clips/" => vec![("a b.mp4".into(), false)],
                _ => vec![],
            }
        };
        let head = "/sendfile bob ";
        let c = complete_path(head, "cl", list).unwrap();
        assert_eq!(c.before_cursor, "/sendfile bob clip");
        assert_eq!(c.candidates, ["clip.mp4", "clips"]);
        let c = complete_path(head, "clips", list).unwrap();
        assert_eq!(c.before_cursor, "/sendfile bob clips/");
        let c = complete_path(head, "clips/", list).unwrap();
        assert_eq!(c.before_cursor, "/sendfile bob clips/a b.mp4 ");
        assert_eq!(
            complete_path(head, ".h", list).unwrap().before_cursor,
            "/sendfile bob .hidden "
        );
        assert_eq!(complete_path(head, "zz", list), None);
    }

    #[test]
    fn names_complete_in_a_message() {
        let done = |line: &str| complete_name(line, &users()).map(|c| c.before_cursor);
        assert_eq!(done("ca").as_deref(), Some("carol: "));
        assert_eq!(done("ask al").as_deref(), Some("ask alice "));
        assert_eq!(done("bo").as_deref(), Some("bob"), "bob and bobby agree on bob");
        assert_eq!(done("hello "), None);
        assert_eq!(done("zed"), None);
    }
}
