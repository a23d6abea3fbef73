//! The small vocabularies the decision core and everything around it share:
//! verdicts, call outcomes, tool categories and risk levels. A leaf module:
//! it depends on nothing else in the crate.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The four verdicts a policy gives a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    Throttle,
    Approval,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Allow,
        Verdict::Deny,
        Verdict::Throttle,
        Verdict::Approval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Throttle => "throttle",
            Verdict::Approval => "approval",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A match, not a search: replay parses this for every recorded row.
        match s {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            "throttle" => Ok(Verdict::Throttle),
            "approval" => Ok(Verdict::Approval),
            _ => Err(()),
        }
        .map_err(|()| format!("unknown verdict `{s}` (expected allow, deny, throttle or approval)"))
    }
}

/// How a forwarded call ended, as far as counters care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A result came back.
    Ok,
    /// A result with `isError: true`: the tool ran, so the call counts.
    ToolError,
    /// A JSON-RPC error response: the call did not run; reservations roll back.
    RpcError,
    NotForwarded,
    Timeout,
    UpstreamGone,
    Interrupted,
    /// The client cancelled the request (`notifications/cancelled`).
    Cancelled,
    /// The server answered with more bytes than the proxy delivers.
    ResponseTooLarge,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::ToolError,
        Outcome::RpcError,
        Outcome::NotForwarded,
        Outcome::Timeout,
        Outcome::UpstreamGone,
        Outcome::Interrupted,
        Outcome::Cancelled,
        Outcome::ResponseTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::RpcError => "rpc_error",
            Outcome::NotForwarded => "not_forwarded",
            Outcome::Timeout => "timeout",
            Outcome::UpstreamGone => "upstream_gone",
            Outcome::Interrupted => "interrupted",
            Outcome::Cancelled => "cancelled",
            Outcome::ResponseTooLarge => "response_too_large",
        }
    }

    /// Whether a call with this outcome gives its counter reservations
    /// back: only when it certainly never ran. A JSON-RPC error proves that
    /// (as in Intercept), and so does a call the proxy never forwarded. An
    /// `isError` result, a timeout or a lost upstream keep the counts: the
    /// tool may have run (conservative).
    pub fn rolls_back(self) -> bool {
        matches!(self, Outcome::RpcError | Outcome::NotForwarded)
    }

    /// A failing outcome of a call that was forwarded (`tool_error`,
    /// `rpc_error`, `timeout`): what a circuit breaker counts and what a
    /// scenario agent with `on_error: retry_same` retries.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::ToolError | Outcome::RpcError | Outcome::Timeout
        )
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(Outcome::Ok),
            "tool_error" => Ok(Outcome::ToolError),
            "rpc_error" => Ok(Outcome::RpcError),
            "not_forwarded" => Ok(Outcome::NotForwarded),
            "timeout" => Ok(Outcome::Timeout),
            "upstream_gone" => Ok(Outcome::UpstreamGone),
            "interrupted" => Ok(Outcome::Interrupted),
            "cancelled" => Ok(Outcome::Cancelled),
            "response_too_large" => Ok(Outcome::ResponseTooLarge),
            _ => Err(()),
        }
        .map_err(|()| {
                format!(
                    "unknown outcome `{s}` (expected ok, tool_error, rpc_error, not_forwarded, timeout, upstream_gone, interrupted, cancelled or response_too_large)"
                )
            })
    }
}

/// What a tool does, from the server's annotations, the policy's
/// `categories:` map, or the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Read,
    Write,
    Execute,
    Destructive,
    Unknown,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Read,
        Category::Write,
        Category::Execute,
        Category::Destructive,
        Category::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Read => "read",
            Category::Write => "write",
            Category::Execute => "execute",
            Category::Destructive => "destructive",
            Category::Unknown => "unknown",
        }
    }

    /// The category MCP tool annotations state: `readOnlyHint` → read,
    /// `destructiveHint` → destructive, any other annotated tool → write.
    pub fn from_annotations(annotations: &serde_json::Value) -> Category {
        let flag = |k: &str| annotations.get(k).and_then(serde_json::Value::as_bool) == Some(true);
        if flag("readOnlyHint") {
            Category::Read
        } else if flag("destructiveHint") {
            Category::Destructive
        } else {
            Category::Write
        }
    }

    /// The category a tool's name suggests, when the server gave no
    /// annotations and the policy's `categories:` map says nothing:
    /// `get_`, `list_`, `describe_`, `search_`, `read_` → read; `delete_`,
    /// `remove_`, `purge_`, `destroy_`, `drop_` → destructive; else write.
    pub fn from_tool_name(tool: &str) -> Category {
        let t = tool.to_ascii_lowercase();
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| t.starts_with(p));
        if starts(&["get_", "list_", "describe_", "search_", "read_"]) {
            Category::Read
        } else if starts(&["delete_", "remove_", "purge_", "destroy_", "drop_"]) {
            Category::Destructive
        } else {
            Category::Write
        }
    }

    /// The risk a category implies when nothing states one.
    pub fn default_risk(self) -> Risk {
        match self {
            Category::Read => Risk::Low,
            Category::Write | Category::Unknown => Risk::Medium,
            Category::Execute | Category::Destructive => Risk::High,
        }
    }
}

impl FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Category::Read),
            "write" => Ok(Category::Write),
            "execute" => Ok(Category::Execute),
            "destructive" => Ok(Category::Destructive),
            "unknown" => Ok(Category::Unknown),
            _ => Err(()),
        }
        .map_err(|()| {
            format!(
                "unknown category `{s}` (expected read, write, execute, destructive or unknown)"
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub const ALL: [Risk; 3] = [Risk::Low, Risk::Medium, Risk::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

impl FromStr for Risk {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Risk::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown risk `{s}` (expected low, medium or high)"))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
