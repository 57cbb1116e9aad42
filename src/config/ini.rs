//! A line-preserving INI document: edits change only the lines they touch, so comments and
//! the operator's layout survive `om node set` and a join.
//!
//! Hand-written on purpose: the INI crates on crates.io either drop comments on write or
//! reorder keys, and node.conf is a file people edit.

use std::fmt;

/// A syntax error, with the 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct SyntaxError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Section {
        name: String,
        /// The line as read, printed back untouched.
        raw: String,
    },
    Entry {
        key: String,
        value: String,
        /// The line as read; `None` once `set` changed it, so it is printed anew.
        raw: Option<String>,
        /// The inline comment with the whitespace before it (`"   # why"`): an edit keeps it.
        comment: String,
    },
    /// Blank lines and comments, kept verbatim.
    Other(String),
}

/// Splits `text` at its inline comment: a `#` or `;` that follows whitespace. Returns the
/// text before the whitespace and the comment with that whitespace.
fn split_comment(text: &str) -> (&str, &str) {
    let mut prev_ws = false;
    for (i, c) in text.char_indices() {
        if (c == '#' || c == ';') && prev_ws {
            let head = text[..i].trim_end();
            return (head, &text[head.len()..]);
        }
        prev_ws = c.is_whitespace();
    }
    (text, "")
}

/// Whether `value` would be cut short by [`IniDoc::parse`] (it holds an inline comment
/// marker, or leading or trailing whitespace that parsing trims).
pub(super) fn value_survives(value: &str) -> bool {
    split_comment(value).1.is_empty() && value.trim() == value
}

/// A parsed INI file that prints back as it was read, plus edits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniDoc {
    lines: Vec<Line>,
}

impl IniDoc {
    /// Parses `text`; keys before any section header are an error. A `#` or `;` at the
    /// start of a line, or after whitespace anywhere on a line, starts a comment.
    pub fn parse(text: &str) -> Result<IniDoc, SyntaxError> {
        let mut lines = Vec::new();
        let mut in_section = false;
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            let err = |reason: String| SyntaxError {
                line: i + 1,
                reason,
            };
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let body = split_comment(t).0;
            if let Some(rest) = body.strip_prefix('[') {
                // Section names are not secrets: they may be quoted in errors.
                let Some(close) = rest.find(']') else {
                    return Err(err(format!(
                        "expected ']' to close the section header '[{rest}' \
                         (a comment after it starts with ' #' or ' ;')"
                    )));
                };
                if !rest[close + 1..].trim().is_empty() {
                    return Err(err(format!(
                        "expected the end of the line or a comment (' #' or ' ;') after \
                         the section header '[{}]'",
                        &rest[..close]
                    )));
                }
                let name = rest[..close].trim();
                if name.is_empty() {
                    return Err(err("empty section name in '[]'".into()));
                }
                in_section = true;
                lines.push(Line::Section {
                    name: name.to_string(),
                    raw: raw.to_string(),
                });
            } else if let Some((k, v)) = body.split_once('=') {
                let key = k.trim();
                if key.is_empty() {
                    return Err(err("expected a key before '='".into()));
                }
                if !in_section {
                    return Err(err(format!(
                        "key '{key}' comes before any '[section]' header"
                    )));
                }
                lines.push(Line::Entry {
                    key: key.to_string(),
                    value: v.trim().to_string(),
                    raw: Some(raw.to_string()),
                    comment: split_comment(raw).1.to_string(),
                });
            } else {
                // The line itself is not quoted: it could be a misplaced secret.
                return Err(err(
                    "expected '[section]', 'key = value' or a comment".into()
                ));
            }
        }
        Ok(IniDoc { lines })
    }

    /// Every (section, key, value) in file order.
    pub fn entries(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut section = String::new();
        for l in &self.lines {
            match l {
                Line::Section { name, .. } => section = name.clone(),
                Line::Entry { key, value, .. } => {
                    out.push((section.clone(), key.clone(), value.clone()))
                }
                Line::Other(_) => {}
            }
        }
        out
    }

    /// The last value of `section.key`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        let mut current = "";
        let mut found = None;
        for l in &self.lines {
            match l {
                Line::Section { name, .. } => current = name,
                Line::Entry { key: k, value, .. } if current == section && k == key => {
                    found = Some(value.as_str())
                }
                _ => {}
            }
        }
        found
    }

    /// Sets `section.key`: its existing line is changed in place (earlier duplicates are
    /// removed), else a line is added after the section's last entry, or a new section.
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        let positions = self.positions(section, key);
        if let Some((&last, earlier)) = positions.split_last() {
            if let Line::Entry {
                value: v,
                raw,
                comment,
                ..
            } = &mut self.lines[last]
            {
                // The comment says what the key is for: it stays, at its column if it can.
                let old = raw
                    .take()
                    .unwrap_or_else(|| format!("{key} = {v}{comment}"));
                let text = comment.trim_start();
                let col = old.len() - text.len();
                let new_len = key.len() + 3 + value.len();
                *comment = if text.is_empty() {
                    String::new()
                } else if new_len < col {
                    format!("{}{text}", " ".repeat(col - new_len))
                } else {
                    format!(" {text}")
                };
                *v = value.to_string();
            }
            for &i in earlier.iter().rev() {
                self.lines.remove(i);
            }
            return;
        }
        let entry = Line::Entry {
            key: key.to_string(),
            value: value.to_string(),
            raw: None,
            comment: String::new(),
        };
        let mut current: Option<&str> = None;
        let mut insert_at = None;
        for (i, l) in self.lines.iter().enumerate() {
            match l {
                Line::Section { name, .. } => {
                    current = Some(name);
                    if name == section {
                        insert_at = Some(i + 1);
                    }
                }
                Line::Entry { .. } if current == Some(section) => insert_at = Some(i + 1),
                _ => {}
            }
        }
        match insert_at {
            Some(i) => self.lines.insert(i, entry),
            None => {
                if !self.lines.is_empty() {
                    self.lines.push(Line::Other(String::new()));
                }
                self.lines.push(Line::Section {
                    name: section.to_string(),
                    raw: format!("[{section}]"),
                });
                self.lines.push(entry);
            }
        }
    }

    /// Line indexes of `section.key`, in file order.
    fn positions(&self, section: &str, key: &str) -> Vec<usize> {
        let mut current = "";
        let mut out = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            match l {
                Line::Section { name, .. } => current = name,
                Line::Entry { key: k, .. } if current == section && k == key => out.push(i),
                _ => {}
            }
        }
        out
    }

    /// Removes every line of `section.key`; returns whether there was one.
    pub fn unset(&mut self, section: &str, key: &str) -> bool {
        let mut current = String::new();
        let before = self.lines.len();
        self.lines.retain(|l| match l {
            Line::Section { name, .. } => {
                current = name.clone();
                true
            }
            Line::Entry { key: k, .. } => !(current == section && k == key),
            Line::Other(_) => true,
        });
        before != self.lines.len()
    }
}

impl fmt::Display for IniDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            match l {
                Line::Section { raw, .. } => writeln!(f, "{raw}")?,
                Line::Entry { raw: Some(raw), .. } => writeln!(f, "{raw}")?,
                Line::Entry {
                    key,
                    value,
                    raw: None,
                    comment,
                } => writeln!(f, "{key} = {value}{comment}")?,
                Line::Other(raw) => writeln!(f, "{raw}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_comments_and_order() {
        let text = "# my node\n[node]\nname = n1\n\n[listener]\n; the port\nport = 1214\n";
        let mut doc = IniDoc::parse(text).unwrap();
        assert_eq!(doc.to_string(), text);
        doc.set("listener", "port", "1215");
        doc.set("listener", "addr", "0.0.0.0");
        doc.set("cluster", "name", "c1");
        assert_eq!(
            doc.to_string(),
            "# my node\n[node]\nname = n1\n\n[listener]\n; the port\nport = 1215\naddr = 0.0.0.0\n\n[cluster]\nname = c1\n"
        );
        assert!(doc.unset("node", "name"));
        assert_eq!(doc.get("node", "name"), None);
    }

    #[test]
    fn inline_comments_on_sections_and_values_survive_edits() {
        let text = "[node]   # this host\nname = n1    # default: the hostname\n\
                    split_action = stop       ; stop | none\n\
                    [listener] ; the port\nport = 1214\nstart = a.sh;b.sh #c\n";
        let mut doc = IniDoc::parse(text).unwrap();
        assert_eq!(doc.to_string(), text, "an unedited document prints as read");
        assert_eq!(doc.get("node", "name"), Some("n1"));
        assert_eq!(doc.get("node", "split_action"), Some("stop"));
        // A ';' or '#' inside a word is part of the value.
        assert_eq!(doc.get("listener", "start"), Some("a.sh;b.sh"));
        doc.set("node", "name", "n10");
        doc.set("node", "split_action", "none");
        assert_eq!(
            doc.to_string(),
            "[node]   # this host\nname = n10   # default: the hostname\n\
             split_action = none       ; stop | none\n\
             [listener] ; the port\nport = 1214\nstart = a.sh;b.sh #c\n"
        );
        // A value too long for the comment's column pushes the comment right.
        doc.set("node", "name", "a-very-long-node-name");
        assert!(doc
            .to_string()
            .contains("name = a-very-long-node-name # default: the hostname\n"));
        assert!(value_survives("a;b") && !value_survives("a ;b") && !value_survives("a #"));
    }

    #[test]
    fn syntax_errors_name_the_line_and_what_was_expected() {
        assert_eq!(
            IniDoc::parse("[node]\nname n1\n").unwrap_err().to_string(),
            "line 2: expected '[section]', 'key = value' or a comment"
        );
        let e = IniDoc::parse("a = 1\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("before any '[section]'"), "{e}");
        let e = IniDoc::parse("[node]\n[listener  # c\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("expected ']'"), "{e}");
        let e = IniDoc::parse("[node] x\n").unwrap_err();
        assert!(
            e.reason.contains("after the section header '[node]'"),
            "{e}"
        );
        // Without whitespace before it, '#' is not a comment: text follows the header.
        assert!(IniDoc::parse("[node]#c\n").is_err());
        assert!(IniDoc::parse("[node] #c\n").is_ok());
    }
}
