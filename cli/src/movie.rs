//! Movie files: everything a movie is (size, fps, length, style, schedules, loss, seed, output)
//! in one TOML file to edit, review and version. `gramzoom render movie.toml`, `submit
//! movie.toml` and `plan movie.toml` read its keys as the flags they name, written before the
//! command line's: every flag has its key (`fps = 24`, `zoom = "0:(1.5), 4s:(3)"`,
//! `frames_dir = "frames"`, `style = "wheat.jpg"` for the style image, `styles` for the named
//! styles of a blend, as a table `{ a = "first.jpg", b = "second.jpg" }` or a list of
//! `NAME=PATH`), a flag given on the command line wins (a list flag typed there replaces the
//! file's list), and paths are relative to the file. A key no movie command knows is an
//! error; one that only another of them takes (`priority` for `render`) is passed over, so one
//! file serves all three.

use clap::Command;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// A movie file's size: ample for any schedule (64 KiB each) several times over.
pub const MAX_MOVIE_FILE_BYTES: u64 = 1 << 20;
/// The commands that take a movie file.
pub const MOVIE_COMMANDS: [&str; 3] = ["render", "submit", "plan"];

#[derive(Debug, thiserror::Error)]
pub enum MovieError {
    #[error("movie file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("movie file {path}, line {line}: {reason}")]
    Key { path: PathBuf, line: usize, reason: String },
}

/// `args` (the whole command line) with a movie file, the first argument after `render`,
/// `submit` or `plan` when it ends in `.toml`, replaced by the flags its keys stand for.
pub fn expand(args: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, MovieError> {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()).filter(|s| MOVIE_COMMANDS.contains(s)) else {
        return Ok(args);
    };
    let is_movie = |a: &OsString| Path::new(a).extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let Some(file) = args.get(2).filter(|a| is_movie(a)) else {
        return Ok(args);
    };
    let flags = flags(Path::new(file), cli, sub, &args[3..])?;
    let mut out = args[..2].to_vec();
    out.extend(flags);
    out.extend(args[3..].iter().cloned());
    Ok(out)
}

/// The flags a movie file stands for, for subcommand `sub` given `rest` on the command line: a
/// key whose flag conflicts with one given there (`seconds` in the file, `--frames` typed) is
/// left out, as the command line wins.
fn flags(path: &Path, cli: &Command, sub: &str, rest: &[OsString]) -> Result<Vec<OsString>, MovieError> {
    let file_error = |reason: String| MovieError::File { path: path.to_path_buf(), reason };
    let size = std::fs::metadata(path).map_err(|e| file_error(e.to_string().to_lowercase()))?.len();
    if size > MAX_MOVIE_FILE_BYTES {
        return Err(file_error(format!("is {size} bytes, at most {MAX_MOVIE_FILE_BYTES} allowed")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string().to_lowercase()))?;
    let line_of = |byte: usize| text[..byte.min(text.len())].matches('\n').count() + 1;
    let table = DeTable::parse(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        MovieError::Key { path: path.to_path_buf(), line, reason: e.message().trim_end_matches('.').to_lowercase() }
    })?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut this = cli.find_subcommand(sub).expect("a movie command").clone();
    this.build();
    let typed = |long: &str| {
        rest.iter().filter_map(|a| a.to_str()).any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    };
    let mut out = Vec::new();
    for (key, value) in table.get_ref() {
        let line = line_of(key.span().start);
        let error = |reason: String| MovieError::Key { path: path.to_path_buf(), line, reason };
        let name = key.get_ref().as_ref();
        let id = name.replace('-', "_");
        let arg = this.get_arguments().find(|a| a.get_id().as_str() == id && !a.is_hide_set());
        let Some(arg) = arg else {
            let elsewhere = MOVIE_COMMANDS
                .iter()
                .filter_map(|c| cli.find_subcommand(c))
                .any(|c| c.get_arguments().any(|a| a.get_id().as_str() == id && !a.is_hide_set()));
            if elsewhere {
                tracing::debug!(key = name, command = sub, "movie file key for another command passed over");
                continue;
            }
            let mut known: Vec<String> = this
                .get_arguments()
                .filter(|a| !a.is_hide_set() && a.get_id() != "help")
                .map(|a| a.get_id().to_string())
                .collect();
            known.sort();
            return Err(error(format!("unknown key {name:?}; {sub} takes {}", known.join(", "))));
        };
        // Conflicts are declared on one side (`frames` conflicts with `seconds`): look both ways.
        let conflicts =
            |a: &clap::Arg, b: &clap::Arg| this.get_arg_conflicts_with(a).iter().any(|c| c.get_id() == b.get_id());
        if this.get_arguments().any(|t| t.get_long().is_some_and(typed) && (conflicts(arg, t) || conflicts(t, arg))) {
            continue;
        }
        // A list typed on the command line replaces the file's (`--style` given twice there
        // names the movie's styles, not two more).
        if matches!(arg.get_action(), clap::ArgAction::Append) && arg.get_long().is_some_and(typed) {
            continue;
        }
        let is_path = arg.get_value_parser().type_id() == clap::builder::ValueParser::path_buf().type_id();
        let words = if id == "styles" { named_styles(value.get_ref(), dir) } else { values(value.get_ref()) };
        let words = words.map_err(|what| error(format!("{name}: {what}")))?;
        let takes_value = arg.get_action().takes_values();
        for word in words {
            let word = match word {
                Word::Flag(false) => continue,
                Word::Flag(true) if !takes_value => None,
                Word::Flag(b) => Some(OsString::from(b.to_string())),
                Word::Text(t) if is_path => Some(dir.join(t).into_os_string()),
                Word::Text(t) => Some(OsString::from(t)),
            };
            if !takes_value && word.is_some() {
                return Err(error(format!("{name} is a switch: write {name} = true or leave it out")));
            }
            match (arg.get_long(), word) {
                (Some(long), word) => {
                    out.push(OsString::from(format!("--{long}")));
                    out.extend(word);
                }
                // A positional (the style): its value alone, first.
                (None, Some(word)) => out.insert(0, word),
                (None, None) => {}
            }
        }
    }
    Ok(out)
}

enum Word {
    Text(String),
    Flag(bool),
}

/// The named styles of a blend as `--style NAME=PATH` words, each path relative to the file:
/// a table of names and paths, or a list of `NAME=PATH` (or bare paths, named by their stem).
fn named_styles(value: &DeValue, dir: &Path) -> Result<Vec<Word>, String> {
    let joined = |path: &str| dir.join(path).to_string_lossy().into_owned();
    match value {
        DeValue::Table(table) => table
            .iter()
            .map(|(name, path)| match path.get_ref() {
                DeValue::String(p) => Ok(Word::Text(format!("{}={}", name.get_ref(), joined(p)))),
                _ => Err(format!("style {:?}: its path is a string", name.get_ref().as_ref())),
            })
            .collect(),
        other => values(other)?
            .into_iter()
            .map(|word| match word {
                Word::Text(t) => Ok(Word::Text(match crate::styles::parse_named(&t) {
                    Ok((name, path)) if t.starts_with(&format!("{name}=")) => {
                        format!("{name}={}", joined(&path.to_string_lossy()))
                    }
                    _ => joined(&t),
                })),
                Word::Flag(_) => Err("a style is NAME=PATH, not true or false".into()),
            })
            .collect(),
    }
}

/// A key's value as the words of its flag: a list gives the flag once per item.
fn values(value: &DeValue) -> Result<Vec<Word>, String> {
    Ok(match value {
        DeValue::String(s) => vec![Word::Text(s.to_string())],
        DeValue::Integer(i) => vec![Word::Text(i.to_string())],
        DeValue::Float(f) => vec![Word::Text(f.as_str().to_string())],
        DeValue::Boolean(b) => vec![Word::Flag(*b)],
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::Array(_) | DeValue::Table(_) => return Err("a list holds strings or numbers".into()),
                    v => out.extend(values(v)?),
                }
            }
            out
        }
        DeValue::Datetime(_) => return Err("a date is not a setting; write a string or a number".into()),
        DeValue::Table(_) => return Err("a table is not a setting; write a string, a number, true or a list".into()),
    })
}
