//! Policy loading errors: every problem found in a file, each with its place.

use crate::policy::yaml::Pos;
use std::fmt;
use std::path::PathBuf;

/// One problem in a policy file, at a line and column.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub pos: Pos,
    pub message: String,
    /// What to do about it, when there is something specific to say.
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.pos, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy. All problems found are
    /// listed, in file order.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

impl PolicyError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            PolicyError::Invalid(p) => p,
            PolicyError::Io { .. } => &[],
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("error: {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
