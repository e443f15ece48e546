//! `Invalid`: the one error every config validator returns — which field, and why.
//! `config` adds the file and line when it reports it.

/// A config field that fails validation; `field` is its dotted path (`a.b[2].c`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
