//! Errors that name the file, the line, the column and the field, for the TOML files the render
//! half reads (`inventory.toml`, `platform.toml`): the user fixes them without guessing.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A bad value, located.
#[derive(Debug, thiserror::Error)]
#[error("{file}, line {line}, column {column}, field `{field}`: {message}")]
pub struct Located {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl Located {
    /// The error for the value at byte `span` of `text`, read from `file`.
    pub fn at(
        file: &Path,
        text: &str,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_column(text, span.start);
        Self {
            file: file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A syntax or type error from the TOML parser, located and with the field it concerns.
pub fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> Located {
    let offset = error.span().map_or(0, |span| span.start);
    let (line, column) = line_column(text, offset);
    Located {
        file: path.to_owned(),
        line,
        column,
        field: field_at(text, offset, error.message()),
        message: error.message().trim().to_owned(),
    }
}

/// The dotted path of the field at `offset`: the table header above it (`hosts[1]`, `settings`)
/// and the key on its line, or the field a "missing field" message names.
fn field_at(text: &str, offset: usize, message: &str) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    // `[[hosts]]`, `[[services]]`: how many of each array's tables came so far.
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for line in text[..offset].split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with("[[") {
            let name = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            let count = counts.entry(name.to_owned()).or_insert(0);
            table = format!("{name}[{count}]");
            *count += 1;
        } else if trimmed.starts_with('[') {
            table = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        }
    }
    let current_start = text[..offset].rfind('\n').map_or(0, |at| at + 1);
    let current_line = text[current_start..].lines().next().unwrap_or("");
    let key = match current_line.split_once('=') {
        Some((key, _)) if !current_line.trim_start().starts_with('[') => {
            Some(key.trim().trim_matches('"').to_owned())
        }
        _ => None,
    };
    let key = key.or_else(|| {
        let start = message.find('`')? + 1;
        let end = start + message[start..].find('`')?;
        Some(message[start..end].to_owned())
    });
    match (table.is_empty(), key) {
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
        (_, None) if !table.is_empty() => table,
        _ => "(top level)".to_owned(),
    }
}
