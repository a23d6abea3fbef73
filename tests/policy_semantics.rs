//! The decision core's semantics, rule by rule (§2), through the public API.

use flightrec::policy::{
    ApprovalMode, Call, Category, CounterStore, Outcome, Policy, PolicyState, Verdict,
};
use serde_json::{Value, json};

const SEC: i64 = 1_000_000;
/// 2026-11-25T00:00:00Z, a day (and so minute and hour) boundary.
const DAY0: i64 = 1_795_564_800 * SEC;

/// A call to server `srv` with no category, risk or precomputed hash.
fn plain_call<'a>(
    ts_us: i64,
    session: &'a str,
    agent: &'a str,
    tool: &'a str,
    args: &'a Value,
) -> Call<'a> {
    Call {
        ts_us,
        session,
        agent,
        server: "srv",
        tool,
        category: None,
        risk: None,
        args,
        args_sha256: None,
    }
}

fn policy(yaml: &str) -> Policy {
    match Policy::from_yaml(yaml, "test.yaml") {
        Ok((p, _)) => p,
        Err(e) => panic!("policy should load:\n{e}"),
    }
}

struct Caller<'p> {
    policy: &'p Policy,
    state: PolicyState,
}

impl<'p> Caller<'p> {
    fn new(policy: &'p Policy) -> Self {
        Caller {
            policy,
            state: PolicyState::new(policy),
        }
    }

    fn call_full(
        &mut self,
        ts: i64,
        session: &str,
        agent: &str,
        tool: &str,
        args: Value,
    ) -> (Verdict, Option<String>, Option<u64>) {
        let call = plain_call(ts, session, agent, tool, &args);
        let d = self.policy.decide(&mut self.state, &call);
        (
            d.verdict,
            d.rule.as_deref().map(str::to_string),
            d.retry_after_ms,
        )
    }

    fn call(&mut self, ts: i64, tool: &str, args: Value) -> Verdict {
        self.call_full(ts, "s1", "a1", tool, args).0
    }
}

#[test]
fn hide_denies_before_anything_else() {
    let p = policy(
        r#"
version: "1"
hide: [secret_tool, "drop_*"]
tools:
  secret_tool:
    rules: []
"#,
    );
    let mut c = Caller::new(&p);
    let (v, rule, _) = c.call_full(DAY0, "s", "a", "secret_tool", json!({}));
    assert_eq!((v, rule.as_deref()), (Verdict::Deny, Some("(hidden)")));
    assert_eq!(c.call(DAY0, "drop_table", json!({})), Verdict::Deny);
    assert_eq!(c.call(DAY0, "other", json!({})), Verdict::Allow);
}

#[test]
fn default_deny_rejects_unlisted_tools_even_with_wildcard_rules() {
    let p = policy(
        r#"
version: "1"
default: deny
tools:
  read_file:
    rules: []
  "list_*":
    rules: []
  "*":
    rules:
      - name: global
        rate_limit: 100/minute
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(c.call(DAY0, "read_file", json!({})), Verdict::Allow);
    assert_eq!(c.call(DAY0, "list_things", json!({})), Verdict::Allow);
    let (v, rule, _) = c.call_full(DAY0, "s", "a", "write_file", json!({}));
    assert_eq!(
        (v, rule.as_deref()),
        (Verdict::Deny, Some("(default deny)"))
    );
}

#[test]
fn exact_key_beats_glob_and_first_glob_wins() {
    let p = policy(
        r#"
version: "1"
tools:
  "copy_*":
    rules:
      - name: glob deny
        action: deny
  "copy_image*":
    rules:
      - name: second glob
        action: deny
  copy_image_set:
    rules:
      - name: exact ok
        conditions: [{path: args.ok, op: eq, value: true}]
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(
        c.call(DAY0, "copy_image_set", json!({"ok": true})),
        Verdict::Allow
    );
    assert_eq!(
        c.call(DAY0, "copy_image_set", json!({"ok": false})),
        Verdict::Deny
    );
    let (_, rule, _) = c.call_full(DAY0, "s", "a", "copy_image_frames", json!({}));
    assert_eq!(rule.as_deref(), Some("glob deny"));
}

#[test]
fn deny_rule_stops_and_wildcard_follows_tool_rules() {
    let p = policy(
        r#"
version: "1"
tools:
  delete_customer:
    rules:
      - name: block destructive action
        action: deny
        on_deny: "Customer deletion is not permitted via AI agents"
  "*":
    rules:
      - name: no prod
        conditions: [{path: args.env, op: neq, value: prod}]
"#,
    );
    let mut c = Caller::new(&p);
    let call = Call {
        ts_us: DAY0,
        session: "s",
        agent: "a",
        server: "x",
        tool: "delete_customer",
        category: None,
        risk: None,
        args: &json!({"env": "dev"}),
        args_sha256: None,
    };
    let d = p.decide(&mut PolicyState::new(&p), &call);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(
        d.message.as_deref(),
        Some("Customer deletion is not permitted via AI agents")
    );
    let (v, rule, _) = c.call_full(DAY0, "s", "a", "create", json!({"env": "prod"}));
    assert_eq!((v, rule.as_deref()), (Verdict::Deny, Some("no prod")));
    // neq on a missing argument fails, as in Intercept.
    assert_eq!(c.call(DAY0, "create", json!({})), Verdict::Deny);
}

#[test]
fn shorthand_counts_in_calendar_minutes_and_throttles_with_retry_after() {
    let p = policy(
        r#"
version: "1"
tools:
  create_issue:
    rules:
      - name: per minute
        rate_limit: 2/minute
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(
        c.call(DAY0 + 58 * SEC, "create_issue", json!({})),
        Verdict::Allow
    );
    assert_eq!(
        c.call(DAY0 + 59 * SEC, "create_issue", json!({})),
        Verdict::Allow
    );
    let (v, rule, retry) = c.call_full(
        DAY0 + 59 * SEC + 500_000,
        "s",
        "a",
        "create_issue",
        json!({}),
    );
    assert_eq!(v, Verdict::Throttle);
    assert_eq!(rule.as_deref(), Some("per minute"));
    assert_eq!(retry, Some(500));
    // The next calendar minute starts from zero.
    assert_eq!(
        c.call(DAY0 + 60 * SEC, "create_issue", json!({})),
        Verdict::Allow
    );
}

#[test]
fn state_block_with_increment_from_caps_a_sum() {
    let p = policy(
        r#"
version: "1"
tools:
  create_charge:
    rules:
      - name: daily spend cap
        conditions:
          - path: state.create_charge.daily_spend
            op: lte
            value: 1000
        state:
          counter: daily_spend
          window: day
          increment_from: args.amount
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(
        c.call(DAY0, "create_charge", json!({"amount": 600})),
        Verdict::Allow
    );
    assert_eq!(
        c.call(DAY0 + SEC, "create_charge", json!({"amount": 500})),
        Verdict::Throttle
    );
    assert_eq!(
        c.call(DAY0 + 2 * SEC, "create_charge", json!({"amount": 400})),
        Verdict::Allow
    );
    // A missing increment_from argument fails closed.
    let (v, _, _) = c.call_full(DAY0 + 3 * SEC, "s", "a", "create_charge", json!({}));
    assert_eq!(v, Verdict::Deny);
    let call = Call {
        ts_us: DAY0,
        session: "s",
        agent: "a",
        server: "x",
        tool: "create_charge",
        category: None,
        risk: None,
        args: &json!({"amount": "12"}),
        args_sha256: None,
    };
    let d = p.decide(&mut PolicyState::new(&p), &call);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.message
            .unwrap()
            .contains("increment_from args.amount is not a number")
    );
}

#[test]
fn lt_limit_means_one_less_than_lte() {
    let p = policy(
        r#"
version: "1"
tools:
  t:
    rules:
      - name: under three
        conditions: [{path: state.t.n, op: lt, value: 3}]
        state: {counter: n, window: hour}
"#,
    );
    let mut c = Caller::new(&p);
    let verdicts: Vec<Verdict> = (0..4)
        .map(|i| c.call(DAY0 + i * SEC, "t", json!({})))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            Verdict::Allow,
            Verdict::Allow,
            Verdict::Throttle,
            Verdict::Throttle
        ]
    );
}

#[test]
fn sliding_per_session_limit_is_exact_and_scoped() {
    let p = policy(
        r#"
version: "1"
tools:
  copy_image_set:
    rules:
      - name: copy budget
        rate_limit: {max: 2, window: 10s, per: session}
"#,
    );
    let mut c = Caller::new(&p);
    let t = |s: i64| DAY0 + s * SEC;
    assert_eq!(
        c.call_full(t(0), "A", "x", "copy_image_set", json!({})).0,
        Verdict::Allow
    );
    assert_eq!(
        c.call_full(t(5), "A", "x", "copy_image_set", json!({})).0,
        Verdict::Allow
    );
    let (v, _, retry) = c.call_full(t(9), "A", "x", "copy_image_set", json!({}));
    assert_eq!((v, retry), (Verdict::Throttle, Some(1000)));
    // Another session has its own budget.
    assert_eq!(
        c.call_full(t(9), "B", "x", "copy_image_set", json!({})).0,
        Verdict::Allow
    );
    // At t = 10 s the call at 0 leaves (t - 10 s, t].
    assert_eq!(
        c.call_full(t(10), "A", "x", "copy_image_set", json!({})).0,
        Verdict::Allow
    );
}

#[test]
fn rpc_error_rolls_back_but_tool_error_counts() {
    let p = policy(
        r#"
version: "1"
tools:
  t:
    rules:
      - name: one per minute
        rate_limit: 1/minute
"#,
    );
    let mut state = PolicyState::new(&p);
    let args = json!({});
    let call = Call {
        ts_us: DAY0,
        session: "s",
        agent: "a",
        server: "x",
        tool: "t",
        category: None,
        risk: None,
        args: &args,
        args_sha256: None,
    };
    let d = p.decide(&mut state, &call);
    assert_eq!(d.verdict, Verdict::Allow);
    state.settle(d.reservation, Outcome::RpcError); // JSON-RPC error: give it back
    let d = p.decide(&mut state, &call);
    assert_eq!(d.verdict, Verdict::Allow);
    state.settle(d.reservation, Outcome::ToolError); // isError result: the tool ran
    assert_eq!(p.decide(&mut state, &call).verdict, Verdict::Throttle);
}

#[test]
fn throttle_releases_earlier_reservations() {
    let p = policy(
        r#"
version: "1"
tools:
  t:
    rules:
      - name: roomy
        rate_limit: 10/minute
  "*":
    rules:
      - name: tight
        rate_limit: 1/minute
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(c.call(DAY0, "t", json!({})), Verdict::Allow);
    for i in 1..20 {
        let (v, rule, _) = c.call_full(DAY0 + i, "s", "a", "t", json!({}));
        assert_eq!((v, rule.as_deref()), (Verdict::Throttle, Some("tight")));
    }
    // Had the throttled calls kept "roomy" reservations, it would be exhausted.
    assert_eq!(c.call(DAY0 + 60 * SEC, "t", json!({})), Verdict::Allow);
}

#[test]
fn when_scopes_a_rule_and_approval_stops_the_call() {
    let p = policy(
        r#"
version: "1"
categories:
  "delete_*": destructive
tools:
  "*":
    rules:
      - name: destructive needs approval
        when:
          - {path: tool.category, op: eq, value: destructive}
        action: require_approval
      - name: big copies throttled
        when: [{path: args.count, op: gt, value: 100}]
        rate_limit: {max: 1, window: 1h}
"#,
    );
    let mut c = Caller::new(&p);
    let (v, rule, _) = c.call_full(DAY0, "s", "a", "delete_thing", json!({}));
    assert_eq!(
        (v, rule.as_deref()),
        (Verdict::Approval, Some("destructive needs approval"))
    );
    assert_eq!(c.call(DAY0, "copy", json!({"count": 500})), Verdict::Allow);
    assert_eq!(
        c.call(DAY0 + 1, "copy", json!({"count": 500})),
        Verdict::Throttle
    );
    // Small copies are outside the rule's `when` and never counted.
    for i in 0..10 {
        assert_eq!(
            c.call(DAY0 + 2 + i, "copy", json!({"count": 5})),
            Verdict::Allow
        );
    }
}

#[test]
fn approvals_grant_counts_but_deny_does_not() {
    let p = policy(
        r#"
version: "1"
tools:
  reboot_broker:
    rules:
      - name: human
        action: require_approval
      - name: budget
        rate_limit: {max: 1, window: 1h}
"#,
    );
    let args = json!({});
    let call = |ts| Call {
        ts_us: ts,
        session: "s",
        agent: "a",
        server: "x",
        tool: "reboot_broker",
        category: Some(Category::Write),
        risk: None,
        args: &args,
        args_sha256: None,
    };
    let mut granted = PolicyState::new(&p);
    let d1 = p.decide_with(&mut granted, &call(DAY0), ApprovalMode::Grant);
    assert_eq!(d1.verdict, Verdict::Approval);
    assert_eq!(d1.reservation.len(), 1);
    let d2 = p.decide_with(&mut granted, &call(DAY0 + 1), ApprovalMode::Grant);
    assert_eq!(d2.verdict, Verdict::Approval);
    assert!(
        d2.reservation.is_empty(),
        "the budget is spent: nothing reserved"
    );

    let mut denied = PolicyState::new(&p);
    for i in 0..3 {
        let d = p.decide_with(&mut denied, &call(DAY0 + i), ApprovalMode::Deny);
        assert_eq!(d.verdict, Verdict::Approval);
        assert!(d.reservation.is_empty());
    }
}

#[test]
fn glob_key_counters_are_scoped_by_tool_name() {
    let p = policy(
        r#"
version: "1"
tools:
  "copy_*":
    rules:
      - name: copies
        rate_limit: 1/hour
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(c.call(DAY0, "copy_a", json!({})), Verdict::Allow);
    assert_eq!(c.call(DAY0, "copy_b", json!({})), Verdict::Allow);
    assert_eq!(c.call(DAY0, "copy_a", json!({})), Verdict::Throttle);
}

#[test]
fn wildcard_counters_are_global_and_readable_as_global_state() {
    let p = policy(
        r#"
version: "1"
tools:
  "*":
    rules:
      - name: global rate limit
        conditions: [{path: state._global.calls, op: lte, value: 2}]
        state: {counter: calls, window: minute}
  report:
    rules:
      - name: only when quiet
        conditions: [{path: state._global.calls, op: lt, value: 1}]
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(c.call(DAY0, "report", json!({})), Verdict::Allow);
    // One call counted: "report" now reads 1 and is refused by its check.
    let (v, rule, _) = c.call_full(DAY0 + 1, "s", "a", "report", json!({}));
    assert_eq!(
        (v, rule.as_deref()),
        (Verdict::Deny, Some("only when quiet"))
    );
    assert_eq!(c.call(DAY0 + 2, "x", json!({})), Verdict::Allow);
    assert_eq!(c.call(DAY0 + 3, "y", json!({})), Verdict::Throttle);
}

#[test]
fn call_and_tool_paths_are_readable() {
    let p = policy(
        r#"
version: "1"
categories:
  copy_image_set: {category: write, risk: high}
tools:
  "*":
    rules:
      - name: agent allowlist
        conditions: [{path: call.agent, op: in, value: [good]}]
      - name: no high risk on prod server
        when: [{path: call.server, op: eq, value: srv}]
        conditions: [{path: tool.risk, op: neq, value: high}]
"#,
    );
    let mut c = Caller::new(&p);
    assert_eq!(
        c.call_full(DAY0, "s", "bad", "x", json!({})).0,
        Verdict::Deny
    );
    assert_eq!(
        c.call_full(DAY0, "s", "good", "x", json!({})).0,
        Verdict::Allow
    );
    let (v, rule, _) = c.call_full(DAY0, "s", "good", "copy_image_set", json!({}));
    assert_eq!(
        (v, rule.as_deref()),
        (Verdict::Deny, Some("no high risk on prod server"))
    );
}

#[test]
fn always_refuses_reports_tools_to_drop_from_tools_list() {
    let p = policy(
        r#"
version: "1"
default: deny
hide: [h]
tools:
  d:
    rules: [{name: no, action: deny}]
  c:
    rules:
      - {name: maybe, when: [{path: args.x, op: eq, value: 1}], action: deny}
  ok:
    rules: []
"#,
    );
    assert!(p.always_refuses("h"));
    assert!(p.always_refuses("d"));
    assert!(p.always_refuses("unlisted"));
    assert!(!p.always_refuses("c"));
    assert!(!p.always_refuses("ok"));
}

/// `repeat_limit`: at most N calls of a tool with the same canonical
/// arguments in any window, per scope; other arguments, other sessions and
/// a later time are not limited by it.
#[test]
fn repeat_limit_counts_identical_calls_in_a_sliding_window() {
    let p = policy(
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: same copy again\n        repeat_limit: {max: 3, window: 10m, per: session}\n",
    );
    let mut c = Caller::new(&p);
    let same = json!({"datastoreId": "ds-1", "sourceImageSetId": "set-1"});
    // Key order does not make a call different.
    let same_reordered = json!({"sourceImageSetId": "set-1", "datastoreId": "ds-1"});
    for i in 0..3 {
        let args = if i == 1 {
            same_reordered.clone()
        } else {
            same.clone()
        };
        assert_eq!(
            c.call(DAY0 + i * SEC, "copy_image_set", args),
            Verdict::Allow
        );
    }
    let (v, rule, retry) = c.call_full(DAY0 + 60 * SEC, "s1", "a1", "copy_image_set", same.clone());
    assert_eq!(v, Verdict::Throttle);
    assert_eq!(rule.as_deref(), Some("same copy again"));
    // The first of the three leaves the 10-minute window at DAY0 + 600 s.
    assert_eq!(retry, Some(540_000));
    // Other arguments and another session are other calls.
    let other = json!({"datastoreId": "ds-1", "sourceImageSetId": "set-2"});
    assert_eq!(
        c.call(DAY0 + 61 * SEC, "copy_image_set", other),
        Verdict::Allow
    );
    let (v, ..) = c.call_full(DAY0 + 62 * SEC, "s2", "a1", "copy_image_set", same.clone());
    assert_eq!(v, Verdict::Allow);
    // Once the first leaves the window, one more fits.
    assert_eq!(
        c.call(DAY0 + 600 * SEC, "copy_image_set", same.clone()),
        Verdict::Allow
    );
    // Half a second later the calls at 1 s, 2 s and 600 s are all inside.
    assert_eq!(
        c.call(DAY0 + 600 * SEC + SEC / 2, "copy_image_set", same),
        Verdict::Throttle
    );
}

#[test]
fn repeat_limit_gives_counts_back_on_a_json_rpc_error_and_is_validated() {
    let p = policy(
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: once\n        repeat_limit: {max: 1, window: 1h}\n",
    );
    let mut state = PolicyState::new(&p);
    let args = json!({"x": 1});
    let call = plain_call(DAY0, "s", "a", "copy_image_set", &args);
    let d = p.decide(&mut state, &call);
    assert_eq!(d.verdict, Verdict::Allow);
    state.settle(d.reservation, Outcome::RpcError);
    assert_eq!(p.decide(&mut state, &call).verdict, Verdict::Allow);
    assert_eq!(p.decide(&mut state, &call).verdict, Verdict::Throttle);
    // Validation names the problem and where it is.
    for (yaml, expect) in [
        (
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        repeat_limit: {max: 2, window: 1m, mode: fixed}\n",
            "unknown",
        ),
        (
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        repeat_limit: {max: 2, window: 1m}\n        rate_limit: 5/minute\n",
            "cannot be combined",
        ),
        (
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        repeat_limit: {window: 1m}\n",
            "repeat_limit needs `max`",
        ),
    ] {
        let err = Policy::from_yaml(yaml, "p.yaml")
            .expect_err("invalid")
            .to_string();
        assert!(err.contains(expect) && err.contains("p.yaml:"), "{err}");
    }
}

/// `circuit_breaker`: N failing outcomes in a row within W open the circuit
/// for the cooldown; then one trial call goes through: its success closes
/// the circuit, its failure opens it again. Outcomes arrive by settle.
#[test]
fn circuit_breaker_opens_half_opens_and_closes_on_outcomes() {
    let p = policy(
        "version: \"1\"\ntools:\n  copy_image_set:\n    rules:\n      - name: stop hammering\n        circuit_breaker: {errors: 3, within: 1m, cooldown: 5m, per: agent}\n",
    );
    let mut state = PolicyState::new(&p);
    let args = json!({});
    let call_at = |state: &mut PolicyState, t: i64, agent: &str, outcome: Option<Outcome>| {
        let call = plain_call(t, "s", agent, "copy_image_set", &args);
        let d = p.decide(state, &call);
        let verdict = (
            d.verdict,
            d.retry_after_ms,
            d.rule.as_deref().map(str::to_string),
        );
        if let Some(o) = outcome {
            state.settle(d.reservation, o);
        }
        verdict
    };
    // Two failures, a success (resets the streak), then three failures.
    for (i, o) in [
        Outcome::ToolError,
        Outcome::RpcError,
        Outcome::Ok,
        Outcome::ToolError,
        Outcome::Timeout,
        Outcome::ToolError,
    ]
    .into_iter()
    .enumerate()
    {
        let (v, ..) = call_at(&mut state, DAY0 + i as i64 * SEC, "a1", Some(o));
        assert_eq!(v, Verdict::Allow, "call {i}");
    }
    // Open since the third failure's call (at 5 s) for 5 minutes.
    let (v, retry, rule) = call_at(&mut state, DAY0 + 65 * SEC, "a1", None);
    assert_eq!(v, Verdict::Throttle);
    assert_eq!(rule.as_deref(), Some("stop hammering"));
    assert_eq!(retry, Some((305 - 65) * 1000));
    // Another agent's circuit is its own.
    assert_eq!(
        call_at(&mut state, DAY0 + 66 * SEC, "a2", Some(Outcome::Ok)).0,
        Verdict::Allow
    );
    // Half-open: one trial; a second call while it is in flight is refused.
    let trial = plain_call(DAY0 + 306 * SEC, "s", "a1", "copy_image_set", &args);
    let d = p.decide(&mut state, &trial);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        call_at(&mut state, DAY0 + 307 * SEC, "a1", None).0,
        Verdict::Throttle
    );
    // The trial fails: open again for the cooldown.
    state.settle(d.reservation, Outcome::ToolError);
    let (v, retry, _) = call_at(&mut state, DAY0 + 308 * SEC, "a1", None);
    assert_eq!((v, retry), (Verdict::Throttle, Some((606 - 308) * 1000)));
    // The next trial succeeds: closed, calls flow again.
    assert_eq!(
        call_at(&mut state, DAY0 + 607 * SEC, "a1", Some(Outcome::Ok)).0,
        Verdict::Allow
    );
    assert_eq!(
        call_at(&mut state, DAY0 + 608 * SEC, "a1", Some(Outcome::ToolError)).0,
        Verdict::Allow
    );
    assert_eq!(
        call_at(&mut state, DAY0 + 609 * SEC, "a1", None).0,
        Verdict::Allow
    );
    // Failures further apart than `within` are not a streak.
    let mut spaced = PolicyState::new(&p);
    for i in 0..5 {
        let (v, ..) = call_at(
            &mut spaced,
            DAY0 + i * 61 * SEC,
            "a1",
            Some(Outcome::ToolError),
        );
        assert_eq!(v, Verdict::Allow, "spaced call {i}");
    }
    // Validation.
    let err = Policy::from_yaml(
        "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        circuit_breaker: {errors: 3, within: 1m}\n",
        "p.yaml",
    )
    .expect_err("invalid")
    .to_string();
    assert!(
        err.contains("circuit_breaker needs `cooldown`") && err.contains("p.yaml:"),
        "{err}"
    );
}

/// A repeat limit on `"*"` sees every tool: the same arguments to two tools
/// are two different calls (found by the reference-model property).
#[test]
fn repeat_limit_on_the_wildcard_tells_tools_apart() {
    let p = policy(
        "version: \"1\"\ntools:\n  \"*\":\n    rules:\n      - name: once per agent\n        repeat_limit: {max: 1, window: 1m, per: agent}\n",
    );
    let mut c = Caller::new(&p);
    let args = json!({"id": "x"});
    assert_eq!(c.call(DAY0, "copy_image_set", args.clone()), Verdict::Allow);
    assert_eq!(
        c.call(DAY0 + 1, "delete_image_set", args.clone()),
        Verdict::Allow
    );
    assert_eq!(c.call(DAY0 + 2, "copy_image_set", args), Verdict::Throttle);
}

const BUDGET: &str = r#"
version: "1"
tools:
  create_charge:
    rules:
      - name: spend cap
        conditions:
          - {path: state.create_charge.spent, op: lte, value: 100}
        state: {counter: spent, window: day, increment_from: args.amount}
"#;

/// The message of a call to `create_charge` with `args`.
fn charge(c: &mut Caller<'_>, ts: i64, args: Value) -> (Verdict, String) {
    let call = plain_call(ts, "s1", "a1", "create_charge", &args);
    let d = c.policy.decide(&mut c.state, &call);
    let message = d.message.as_deref().unwrap_or("").to_string();
    c.state.settle(d.reservation, Outcome::Ok);
    (d.verdict, message)
}

/// A negative amount would give budget back: it is refused (fail closed)
/// and counts nothing, so the budget stays what it was.
#[test]
fn increment_from_refuses_a_negative_amount() {
    let p = policy(BUDGET);
    let mut c = Caller::new(&p);
    let (v, message) = charge(&mut c, DAY0, json!({"amount": -1_000_000}));
    assert_eq!(v, Verdict::Deny);
    assert_eq!(
        message,
        "Rule \"spend cap\" cannot count this call: increment_from args.amount is negative (fail closed)"
    );
    assert_eq!(
        charge(&mut c, DAY0 + 1, json!({"amount": 100})).0,
        Verdict::Allow
    );
    assert_eq!(
        charge(&mut c, DAY0 + 2, json!({"amount": 50})).0,
        Verdict::Throttle
    );
    // A negative fraction is negative too, though its integer part is 0.
    let (v, message) = charge(&mut c, DAY0 + 3, json!({"amount": -0.5}));
    assert_eq!(v, Verdict::Deny);
    assert!(message.contains("args.amount is negative"), "{message}");
}

/// Amounts no counter can add exactly (beyond 2^53 − 1, the largest
/// integer every JSON reader and the store's scripts hold exactly) are
/// refused naming the argument; up to it they are counted (here: too much
/// for the budget, a throttle). Zero counts nothing.
#[test]
fn increment_from_refuses_amounts_out_of_range() {
    let p = policy(BUDGET);
    let mut c = Caller::new(&p);
    for amount in [
        json!(9_007_199_254_740_992_i64),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1e300),
        json!(-1e300),
    ] {
        let (v, message) = charge(&mut c, DAY0, json!({ "amount": amount }));
        assert_eq!(v, Verdict::Deny, "{amount}");
        assert!(
            message.starts_with(
                "Rule \"spend cap\" cannot count this call: increment_from args.amount is "
            ) && message.ends_with("(fail closed)"),
            "{amount}: {message}"
        );
    }
    let (v, _) = charge(&mut c, DAY0, json!({"amount": 9_007_199_254_740_991_i64}));
    assert_eq!(v, Verdict::Throttle);
    for _ in 0..3 {
        assert_eq!(charge(&mut c, DAY0, json!({"amount": 0})).0, Verdict::Allow);
    }
    assert_eq!(
        charge(&mut c, DAY0, json!({"amount": 100})).0,
        Verdict::Allow
    );
    assert_eq!(charge(&mut c, DAY0, json!({"amount": 0})).0, Verdict::Allow);
    assert_eq!(
        charge(&mut c, DAY0, json!({"amount": 1})).0,
        Verdict::Throttle
    );
}

/// A counter with no limit of its own (read by another rule) still never
/// passes 2^53 − 1: the call that would take it past is refused, and its
/// total stays exact (no overflow, however many calls).
#[test]
fn a_counter_without_a_limit_stops_at_the_largest_exact_total() {
    let p = policy(
        r#"
version: "1"
tools:
  create_charge:
    rules:
      - name: track spend
        conditions: [{path: state.create_charge.spent, op: gte, value: 0}]
        state: {counter: spent, window: day, increment_from: args.amount}
  report:
    rules:
      - name: big spenders only
        conditions: [{path: state.create_charge.spent, op: gte, value: 1}]
"#,
    );
    let mut c = Caller::new(&p);
    let big = json!({"amount": 4_503_599_627_370_496_i64}); // 2^52
    assert_eq!(charge(&mut c, DAY0, big.clone()).0, Verdict::Allow);
    assert_eq!(
        charge(&mut c, DAY0, json!({"amount": 4_503_599_627_370_495_i64})).0,
        Verdict::Allow
    );
    for i in 0..2_000 {
        assert_eq!(charge(&mut c, DAY0 + i, big.clone()).0, Verdict::Throttle);
    }
    assert_eq!(c.state.read(0, "", DAY0), Ok(9_007_199_254_740_991));
    assert_eq!(c.call(DAY0, "report", json!({})), Verdict::Allow);
}

/// A fixed `increment` that is negative or beyond 2^53 − 1 is a load
/// error at its place.
#[test]
fn a_negative_or_huge_fixed_increment_is_a_load_error() {
    for (increment, says) in [
        ("-5", "increment must not be negative, got -5"),
        (
            "9007199254740992",
            "increment must be at most 9007199254740991, got 9007199254740992",
        ),
    ] {
        let yaml = format!(
            "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: r\n        conditions: [{{path: state.t.n, op: lte, value: 10}}]\n        state: {{counter: n, window: hour, increment: {increment}}}\n"
        );
        let err = Policy::from_yaml(&yaml, "p.yaml").unwrap_err().to_string();
        assert!(
            err.contains(&format!("p.yaml:7:54: tools.t.rules[0].state: {says}")),
            "{err}"
        );
    }
}

/// A limit below any total (`lt` the most negative number a YAML float
/// can say) loads, and refuses every call, in memory as in any store.
#[test]
fn a_limit_below_zero_refuses_every_call() {
    let p = policy(
        "version: \"1\"\ntools:\n  t:\n    rules:\n      - name: never\n        conditions: [{path: state.t.n, op: lt, value: -1.0e300}]\n        state: {counter: n, window: hour}\n",
    );
    let mut c = Caller::new(&p);
    assert_eq!(c.call(DAY0, "t", json!({})), Verdict::Throttle);
}
