//! Loading a small config-like file (config, users, token keys): read it whole, parse it,
//! and say which file failed and why, in one wording for every crate. `parse_yaml` is the
//! one YAML entry point of the app and keyring files, so the YAML crate (serde_yaml is
//! deprecated upstream) can be swapped here and in the gateway's `config::parse`.

use std::path::Path;

/// A file that could not be loaded. `what` names the kind of file ("config file").
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid {what} {path}: {message}")]
    Invalid {
        what: &'static str,
        path: String,
        message: String,
    },
}

/// Reads `path` and parses its text with `parse`.
pub fn load_file<T>(
    path: &Path,
    what: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, FileError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
        what,
        path: shown(),
        source,
    })?;
    parse(&text).map_err(|message| FileError::Invalid {
        what,
        path: shown(),
        message,
    })
}

/// YAML text to `T`; the error is the parser's message (with its line and column).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::load_file;

    #[test]
    fn load_file_names_the_file_and_the_reason() {
        let dir = std::env::temp_dir().join(format!("edgekit-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        let bad = dir.join("bad.txt");
        std::fs::write(&good, "42").unwrap();
        std::fs::write(&bad, "forty-two").unwrap();
        let parse = |t: &str| t.trim().parse::<u32>().map_err(|e| e.to_string());
        // (file, Ok(value) or the start of the error text)
        let cases: [(&std::path::Path, Result<u32, String>); 3] = [
            (&good, Ok(42)),
            (
                &bad,
                Err(format!("invalid number file {}: ", bad.display())),
            ),
            (
                &dir.join("missing.txt"),
                Err(format!(
                    "cannot read number file {}",
                    dir.join("missing.txt").display()
                )),
            ),
        ];
        for (path, want) in cases {
            let got = load_file(path, "number file", parse).map_err(|e| e.to_string());
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(g), Err(w)) => assert!(g.starts_with(w.as_str()), "{g:?} vs {w:?}"),
                _ => panic!("{path:?}: got {got:?}, want {want:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
