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
    Section(String),
    Entry {
        key: String,
        value: String,
    },
    /// Blank lines and comments, kept verbatim.
    Other(String),
}

/// A parsed INI file that prints back as it was read, plus edits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniDoc {
    lines: Vec<Line>,
}

impl IniDoc {
    /// Parses `text`; keys before any section header are an error.
    pub fn parse(text: &str) -> Result<IniDoc, SyntaxError> {
        let mut lines = Vec::new();
        let mut in_section = false;
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            let err = |reason: &str| SyntaxError {
                line: i + 1,
                reason: reason.to_string(),
            };
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                lines.push(Line::Other(raw.to_string()));
            } else if let Some(rest) = t.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| err("section header without a closing ']'"))?
                    .trim();
                if name.is_empty() {
                    return Err(err("empty section name"));
                }
                in_section = true;
                lines.push(Line::Section(name.to_string()));
            } else if let Some((k, v)) = t.split_once('=') {
                if !in_section {
                    return Err(err("key outside of a [section]"));
                }
                let key = k.trim();
                if key.is_empty() {
                    return Err(err("empty key before '='"));
                }
                lines.push(Line::Entry {
                    key: key.to_string(),
                    value: v.trim().to_string(),
                });
            } else {
                return Err(err("expected '[section]', 'key = value' or a comment"));
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
                Line::Section(s) => section = s.clone(),
                Line::Entry { key, value } => {
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
                Line::Section(s) => current = s,
                Line::Entry { key: k, value } if current == section && k == key => {
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
            self.lines[last] = Line::Entry {
                key: key.to_string(),
                value: value.to_string(),
            };
            for &i in earlier.iter().rev() {
                self.lines.remove(i);
            }
            return;
        }
        let entry = Line::Entry {
            key: key.to_string(),
            value: value.to_string(),
        };
        let mut current: Option<&str> = None;
        let mut insert_at = None;
        for (i, l) in self.lines.iter().enumerate() {
            match l {
                Line::Section(s) => {
                    current = Some(s);
                    if s == section {
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
                self.lines.push(Line::Section(section.to_string()));
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
                Line::Section(s) => current = s,
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
            Line::Section(s) => {
                current = s.clone();
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
                Line::Section(s) => writeln!(f, "[{s}]")?,
                Line::Entry { key, value } => writeln!(f, "{key} = {value}")?,
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
    fn syntax_errors_name_the_line() {
        assert_eq!(
            IniDoc::parse("[node]\nname n1\n").unwrap_err().to_string(),
            "line 2: expected '[section]', 'key = value' or a comment"
        );
        assert_eq!(IniDoc::parse("a = 1\n").unwrap_err().line, 1);
    }
}
