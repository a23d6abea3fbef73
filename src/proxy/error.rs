//! Why a proxy could not start or had to stop.

/// A proxy's fatal errors (the CLI turns them into exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot start the MCP server `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A bad option or file the proxy cannot start with.
    #[error("{0}")]
    Config(String),
}
