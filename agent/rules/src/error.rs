//! Errors in a rule set, each with the position it refers to.

use std::fmt;

use crate::ast::Pos;

/// One problem in a rule set: where (`line:col`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
    /// The offending source line, when known, for display under the message.
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            message: message.into(),
            source_line: None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Why a rule set was not accepted: every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(.0))]
pub struct RulesError(pub Vec<Diagnostic>);

fn summary(all: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in all.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&d.to_string());
    }
    out
}

/// Most characters of a source line shown under a diagnostic.
const EXCERPT_CHARS: usize = 120;

impl RulesError {
    /// The diagnostics with the file name in front, one per line, with the
    /// source line (an excerpt around the column when the line is long)
    /// and a caret under the column, as compilers print them.
    pub fn render(&self, file: &str, source: &str) -> String {
        let lines: Vec<&str> = source.lines().collect();
        let mut out = String::new();
        for d in &self.0 {
            out.push_str(&format!("{file}:{}: {}\n", d.pos, d.message));
            let line = d
                .source_line
                .as_deref()
                .or_else(|| lines.get((d.pos.line as usize).wrapping_sub(1)).copied());
            if let Some(line) = line {
                let col = (d.pos.col as usize).saturating_sub(1);
                let skip = col.saturating_sub(EXCERPT_CHARS / 2);
                let shown: String = line.chars().skip(skip).take(EXCERPT_CHARS).collect();
                let more = line.chars().nth(skip + EXCERPT_CHARS).is_some();
                let lead = if skip > 0 { "…" } else { "" };
                let tail = if more { "…" } else { "" };
                out.push_str(&format!("  | {lead}{shown}{tail}\n"));
                let pad: String = line
                    .chars()
                    .skip(skip)
                    .take(col - skip)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let lead_pad = if skip > 0 { " " } else { "" };
                out.push_str(&format!("  | {lead_pad}{pad}^\n"));
            }
        }
        out
    }
}
