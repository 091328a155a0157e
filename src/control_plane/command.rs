//! The operator's command grammar: one for every interface (an HTTP JSON body, a WebSocket
//! frame, an LSL Markers sample). A command is parsed, then checked against the session
//! (the model's dimensions, the task library, the rig file's limits) before anything
//! changes; every refusal names the field and says what was expected.
//!
//! JSON: `{"command": "disarm"}`, `{"command": "set_objective", "kind": "rates", "target": [12.0]}`.
//! Markers text: the same JSON, or the short form `arm`, `disarm`, `stop`, `unlock_task`,
//! `lock_task 2`, `mark <free text>`, `set_objective latent|rates <numbers…>`,
//! `set_fallback hold|zero|vector [numbers…]`; `set_limits` takes JSON only.

use crate::rig::{FallbackKind, ObjectiveKind};
use serde::{Deserialize, Serialize};

/// The longest `mark` text accepted (bytes): an annotation, not a data channel.
pub const MAX_MARK_BYTES: usize = 1024;
/// The longest command accepted, in bytes (an HTTP body, a marker): a rates objective for
/// the largest array the rig allows, written out.
pub const MAX_COMMAND_BYTES: usize = 2 << 20;

/// A command as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Open the enable gate: the loop's commands go out.
    Arm,
    /// Close the enable gate: the safe zero goes out (rate-limited), the loop keeps running.
    Disarm,
    /// A new objective: `target` has d values (latent) or N, or one for all units (rates, Hz).
    SetObjective { kind: ObjectiveKind, target: Vec<f64> },
    /// Hold the embedding on library task `task` (task identification and the online update
    /// stop).
    LockTask { task: usize },
    /// Let task identification and the online update run again.
    UnlockTask,
    /// Tighter bounds or a smaller maximum step (m values or one for all); never wider than
    /// the rig file's.
    SetLimits {
        #[serde(default)]
        lower: Option<Vec<f64>>,
        #[serde(default)]
        upper: Option<Vec<f64>>,
        #[serde(default)]
        max_step: Option<f64>,
    },
    /// What goes out when the loop is late or asks for it; `vector` (m values) for `vector`.
    SetFallback {
        fallback: FallbackKind,
        #[serde(default)]
        vector: Option<Vec<f64>>,
    },
    /// A free-text annotation, recorded with the bin it came at.
    Mark { text: String },
    /// Finish the current bin, write the report and the recording.
    Stop,
}

/// A refusal: which field, and what was expected. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("`{field}`: {message}")]
pub struct CommandError {
    pub field: String,
    pub message: String,
}

fn refuse(field: &str, message: impl Into<String>) -> CommandError {
    CommandError { field: field.into(), message: message.into() }
}

/// What a command is checked against: the session's model and the rig file's limits.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// N, d, m.
    pub n_units: usize,
    pub latent: usize,
    pub control: usize,
    /// Library tasks (0: no library, `lock_task` is refused).
    pub tasks: usize,
    /// The rig file's bounds (m each) and maximum step: a command may only tighten them.
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub max_step: f64,
    /// The highest rate target accepted (Hz; the rig's `[objective] max_rate_hz`).
    pub max_rate_hz: f64,
    /// An identification session (the probe): no objective, no task library.
    pub probe: bool,
    /// Why `lock_task` / `unlock_task` cannot be done in this session (a backend that
    /// cannot hold a task), if so.
    pub lock_refusal: Option<String>,
}

impl Request {
    /// A JSON command (an HTTP body, a WebSocket frame).
    pub fn from_json(text: &str) -> Result<Request, CommandError> {
        if text.len() > MAX_COMMAND_BYTES {
            return Err(refuse("command", format!("is {} bytes; at most {MAX_COMMAND_BYTES} are accepted", text.len())));
        }
        let request: Request = serde_json::from_str(text).map_err(|e| json_refusal(text, &e))?;
        // serde ignores extra keys beside a unit variant's tag; the grammar does not.
        if matches!(request, Request::Arm | Request::Disarm | Request::UnlockTask | Request::Stop) {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| json_refusal(text, &e))?;
            if let Some(key) = object.keys().find(|k| *k != "command") {
                return Err(refuse(key, format!("is not a field of `{}`, which takes none", request.name())));
            }
        }
        Ok(request)
    }

    /// A command as an LSL marker: JSON, or the short text form (module docs).
    pub fn from_marker(text: &str) -> Result<Request, CommandError> {
        let t = text.trim();
        if t.starts_with('{') {
            return Request::from_json(t);
        }
        if t.len() > MAX_COMMAND_BYTES {
            return Err(refuse("command", format!("is {} bytes; at most {MAX_COMMAND_BYTES} are accepted", t.len())));
        }
        let (word, rest) = t.split_once(char::is_whitespace).map_or((t, ""), |(w, r)| (w, r.trim()));
        let no_args =
            |r: Request| if rest.is_empty() { Ok(r) } else { Err(refuse("command", format!("`{word}` takes no arguments, got `{rest}`"))) };
        match word {
            "arm" => no_args(Request::Arm),
            "disarm" => no_args(Request::Disarm),
            "stop" => no_args(Request::Stop),
            "unlock_task" => no_args(Request::UnlockTask),
            "mark" => Ok(Request::Mark { text: rest.to_string() }),
            "lock_task" => rest
                .parse()
                .map(|task| Request::LockTask { task })
                .map_err(|_| refuse("task", format!("expected a library task index (0, 1, …), got `{rest}`"))),
            "set_objective" => {
                let (kind, values) = rest.split_once(char::is_whitespace).map_or((rest, ""), |(k, v)| (k, v));
                let kind = match kind {
                    "latent" => ObjectiveKind::Latent,
                    "rates" => ObjectiveKind::Rates,
                    other => return Err(refuse("kind", format!("expected `latent` or `rates`, got `{other}`"))),
                };
                Ok(Request::SetObjective { kind, target: numbers("target", values)? })
            }
            "set_fallback" => {
                let (kind, values) = rest.split_once(char::is_whitespace).map_or((rest, ""), |(k, v)| (k, v));
                let fallback = match kind {
                    "hold" => FallbackKind::Hold,
                    "zero" => FallbackKind::Zero,
                    "vector" => FallbackKind::Vector,
                    other => return Err(refuse("fallback", format!("expected `hold`, `zero` or `vector`, got `{other}`"))),
                };
                let vector = if values.trim().is_empty() { None } else { Some(numbers("vector", values)?) };
                Ok(Request::SetFallback { fallback, vector })
            }
            "set_limits" => Err(refuse(
                "command",
                "set_limits takes JSON: {\"command\": \"set_limits\", \"lower\": […], \"upper\": […], \"max_step\": x}",
            )),
            "" => Err(refuse("command", "is empty")),
            other => Err(refuse("command", format!("unknown command `{other}`; expected one of {}", COMMANDS.join(", ")))),
        }
    }

    /// The command's name, as the grammar spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Arm => "arm",
            Request::Disarm => "disarm",
            Request::SetObjective { .. } => "set_objective",
            Request::LockTask { .. } => "lock_task",
            Request::UnlockTask => "unlock_task",
            Request::SetLimits { .. } => "set_limits",
            Request::SetFallback { .. } => "set_fallback",
            Request::Mark { .. } => "mark",
            Request::Stop => "stop",
        }
    }

    /// Check the command against the session; returns it with every per-channel list at
    /// its full length (one value broadcast), ready to apply. Nothing is applied here.
    pub fn check(self, s: &SessionLimits) -> Result<Request, CommandError> {
        match self {
            Request::SetObjective { .. } | Request::LockTask { .. } | Request::UnlockTask if s.probe => {
                Err(refuse("command", format!("`{}` needs a model; this is an identification session (the probe)", self.name())))
            }
            Request::SetObjective { kind, target } => {
                let target = match kind {
                    ObjectiveKind::Latent if target.len() != s.latent => {
                        return Err(refuse("target", format!("has {} values; a latent objective needs d = {}", target.len(), s.latent)))
                    }
                    ObjectiveKind::Latent => target,
                    ObjectiveKind::Rates => broadcast("target", target, s.n_units, "N")?,
                };
                crate::control::objective::check_target_values(kind == ObjectiveKind::Rates, &target, s.max_rate_hz)
                    .map_err(|e| refuse("target", e))?;
                Ok(Request::SetObjective { kind, target })
            }
            Request::LockTask { .. } | Request::UnlockTask if s.lock_refusal.is_some() => {
                Err(refuse("command", s.lock_refusal.clone().unwrap_or_default()))
            }
            Request::LockTask { task } if task >= s.tasks => Err(refuse(
                "task",
                if s.tasks == 0 {
                    "the model has no task library".to_string()
                } else {
                    format!("is {task}; the library has tasks 0 … {}", s.tasks - 1)
                },
            )),
            Request::SetLimits { lower, upper, max_step } => {
                let m = s.control;
                let lower = lower.map(|v| broadcast("lower", v, m, "m")).transpose()?.unwrap_or_else(|| s.lower.clone());
                let upper = upper.map(|v| broadcast("upper", v, m, "m")).transpose()?.unwrap_or_else(|| s.upper.clone());
                for j in 0..m {
                    if !(lower[j] >= s.lower[j]) {
                        return Err(refuse(
                            "lower",
                            format!(
                                "channel {j}: {} is below the rig file's lower bound {} (a command can only tighten the limits)",
                                lower[j], s.lower[j]
                            ),
                        ));
                    }
                    if !(upper[j] <= s.upper[j]) {
                        return Err(refuse(
                            "upper",
                            format!(
                                "channel {j}: {} is above the rig file's upper bound {} (a command can only tighten the limits)",
                                upper[j], s.upper[j]
                            ),
                        ));
                    }
                    if lower[j] > upper[j] {
                        return Err(refuse("lower", format!("channel {j}: lower {} > upper {}", lower[j], upper[j])));
                    }
                }
                let max_step = max_step.unwrap_or(s.max_step);
                if !(max_step > 0.0 && max_step <= s.max_step) {
                    return Err(refuse(
                        "max_step",
                        format!("is {max_step}; expected > 0 and ≤ the rig file's {} (a command can only tighten the limits)", s.max_step),
                    ));
                }
                Ok(Request::SetLimits { lower: Some(lower), upper: Some(upper), max_step: Some(max_step) })
            }
            Request::SetFallback { fallback, vector } => {
                let vector = match (&fallback, vector) {
                    (FallbackKind::Vector, None) => {
                        return Err(refuse("vector", format!("is required for `vector`: m = {} values", s.control)))
                    }
                    (FallbackKind::Vector, Some(v)) => {
                        let v = broadcast("vector", v, s.control, "m")?;
                        if let Some(j) = (0..s.control).find(|&j| !(v[j] >= s.lower[j] && v[j] <= s.upper[j])) {
                            return Err(refuse(
                                "vector",
                                format!("channel {j}: {} is outside the rig file's bounds [{}, {}]", v[j], s.lower[j], s.upper[j]),
                            ));
                        }
                        Some(v)
                    }
                    (_, Some(_)) => return Err(refuse("vector", "is only for `vector`")),
                    (_, None) => None,
                };
                Ok(Request::SetFallback { fallback, vector })
            }
            Request::Mark { text } if text.len() > MAX_MARK_BYTES => {
                Err(refuse("text", format!("is {} bytes; a mark holds at most {MAX_MARK_BYTES}", text.len())))
            }
            other => Ok(other),
        }
    }
}

/// The grammar's command names.
pub const COMMANDS: [&str; 9] =
    ["arm", "disarm", "set_objective", "lock_task", "unlock_task", "set_limits", "set_fallback", "mark", "stop"];

fn numbers(field: &str, text: &str) -> Result<Vec<f64>, CommandError> {
    let v: Result<Vec<f64>, _> = text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).map(str::parse).collect();
    match v {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(refuse(field, "expected one or more numbers")),
        Err(_) => Err(refuse(field, format!("expected numbers separated by spaces or commas, got `{text}`"))),
    }
}

fn broadcast(field: &str, v: Vec<f64>, len: usize, what: &str) -> Result<Vec<f64>, CommandError> {
    match v.len() {
        1 => Ok(vec![v[0]; len]),
        n if n == len => Ok(v),
        n => Err(refuse(field, format!("has {n} values; expected {what} = {len} (or 1 for all)"))),
    }
}

/// serde_json's message, with the field it is about when it names one.
fn json_refusal(text: &str, e: &serde_json::Error) -> CommandError {
    let msg = e.to_string();
    let field = ["unknown field `", "missing field `", "unknown variant `"]
        .iter()
        .find_map(|p| msg.split_once(p).and_then(|(_, rest)| rest.split_once('`')).map(|(name, _)| name.to_string()));
    let field = match (field, msg.contains("unknown variant")) {
        (_, true) => "command".to_string(),
        (Some(f), false) => f,
        (None, false) if text.trim().is_empty() => {
            return refuse("command", "the body is empty; expected a JSON object such as {\"command\": \"disarm\"}")
        }
        (None, false) => "command".to_string(),
    };
    refuse(&field, format!("{msg} (commands: {})", COMMANDS.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionLimits {
        SessionLimits {
            n_units: 4,
            latent: 2,
            control: 2,
            tasks: 3,
            lower: vec![-1.0, 0.0],
            upper: vec![1.0, 2.0],
            max_step: 0.5,
            max_rate_hz: 200.0,
            probe: false,
            lock_refusal: None,
        }
    }

    fn refused(r: Result<Request, CommandError>) -> CommandError {
        r.expect_err("must be refused")
    }

    /// Every command, in JSON and as a marker, parses to the same request.
    #[test]
    fn each_command_in_json_and_as_a_marker() {
        let cases = [
            (r#"{"command": "arm"}"#, "arm", Request::Arm),
            (r#"{"command": "disarm"}"#, " disarm ", Request::Disarm),
            (r#"{"command": "stop"}"#, "stop", Request::Stop),
            (r#"{"command": "unlock_task"}"#, "unlock_task", Request::UnlockTask),
            (r#"{"command": "lock_task", "task": 2}"#, "lock_task 2", Request::LockTask { task: 2 }),
            (r#"{"command": "mark", "text": "cue on"}"#, "mark cue on", Request::Mark { text: "cue on".into() }),
            (
                r#"{"command": "set_objective", "kind": "latent", "target": [0.5, -0.3]}"#,
                "set_objective latent 0.5 -0.3",
                Request::SetObjective { kind: ObjectiveKind::Latent, target: vec![0.5, -0.3] },
            ),
            (
                r#"{"command": "set_objective", "kind": "rates", "target": [12.0]}"#,
                "set_objective rates 12",
                Request::SetObjective { kind: ObjectiveKind::Rates, target: vec![12.0] },
            ),
            (
                r#"{"command": "set_fallback", "fallback": "hold"}"#,
                "set_fallback hold",
                Request::SetFallback { fallback: FallbackKind::Hold, vector: None },
            ),
            (
                r#"{"command": "set_fallback", "fallback": "vector", "vector": [0.1, 0.2]}"#,
                "set_fallback vector 0.1,0.2",
                Request::SetFallback { fallback: FallbackKind::Vector, vector: Some(vec![0.1, 0.2]) },
            ),
        ];
        for (json, marker, want) in cases {
            assert_eq!(Request::from_json(json).unwrap(), want, "{json}");
            assert_eq!(Request::from_marker(marker).unwrap(), want, "{marker}");
            assert_eq!(Request::from_marker(json).unwrap(), want, "a marker may be JSON: {json}");
        }
        let limits = Request::from_json(r#"{"command": "set_limits", "upper": [0.5], "max_step": 0.1}"#).unwrap();
        assert_eq!(limits, Request::SetLimits { lower: None, upper: Some(vec![0.5]), max_step: Some(0.1) });
        assert_eq!(COMMANDS.len(), 9);
    }

    /// Malformed, unknown and incomplete commands are refused, naming the field.
    #[test]
    fn malformed_commands_name_the_field() {
        let field = |r: Result<Request, CommandError>| refused(r).field;
        assert_eq!(field(Request::from_json(r#"{"command": "fire"}"#)), "command");
        assert_eq!(field(Request::from_json(r#"{"command": "set_objective", "kind": "latent"}"#)), "target");
        assert_eq!(field(Request::from_json(r#"{"command": "lock_task", "task": 1, "force": true}"#)), "force");
        assert_eq!(field(Request::from_json(r#"{"command": "arm", "now": true}"#)), "now");
        assert_eq!(field(Request::from_json("")), "command");
        assert_eq!(field(Request::from_json("{not json")), "command");
        assert_eq!(field(Request::from_json(r#"{"task": 1}"#)), "command");
        assert_eq!(field(Request::from_marker("fire")), "command");
        assert_eq!(field(Request::from_marker("arm now")), "command");
        assert_eq!(field(Request::from_marker("lock_task two")), "task");
        assert_eq!(field(Request::from_marker("set_objective speed 1")), "kind");
        assert_eq!(field(Request::from_marker("set_objective rates")), "target");
        assert_eq!(field(Request::from_marker("set_objective rates 1 x")), "target");
        assert_eq!(field(Request::from_marker("set_fallback off")), "fallback");
        assert_eq!(field(Request::from_marker("set_limits max_step=0.1")), "command");
        assert_eq!(field(Request::from_marker("")), "command");
        let e = refused(Request::from_marker("fire"));
        assert!(e.to_string().contains("arm, disarm"), "the refusal lists the commands: {e}");
        let big = format!("mark {}", "x".repeat(MAX_COMMAND_BYTES));
        assert_eq!(field(Request::from_marker(&big)), "command");
    }

    /// Checks against the session: dimensions, the library, and limits that only tighten.
    #[test]
    fn checked_against_the_session() {
        let s = session();
        let check = |json: &str| Request::from_json(json).unwrap().check(&s);
        // A rates objective broadcasts to N; a latent one needs d values, finite.
        assert_eq!(
            check(r#"{"command": "set_objective", "kind": "rates", "target": [12.0]}"#).unwrap(),
            Request::SetObjective { kind: ObjectiveKind::Rates, target: vec![12.0; 4] }
        );
        assert_eq!(refused(check(r#"{"command": "set_objective", "kind": "latent", "target": [1, 2, 3]}"#)).field, "target");
        assert_eq!(refused(check(r#"{"command": "set_objective", "kind": "rates", "target": [1, 2]}"#)).field, "target");
        assert_eq!(refused(check(r#"{"command": "set_objective", "kind": "rates", "target": [-1.0]}"#)).field, "target");
        assert_eq!(refused(Request::SetObjective { kind: ObjectiveKind::Latent, target: vec![f64::NAN, 0.0] }.check(&s)).field, "target");
        // Objectives the controllers' costs overflow on are refused, naming value and bound.
        for (kind, v, bound) in [
            (ObjectiveKind::Latent, 1e200, "±10"),
            (ObjectiveKind::Latent, -f64::MAX, "±10"),
            (ObjectiveKind::Latent, 10.5, "±10"),
            (ObjectiveKind::Rates, 1e300, "[0, 200] Hz"),
            (ObjectiveKind::Rates, 200.5, "[0, 200] Hz"),
        ] {
            let target = if kind == ObjectiveKind::Latent { vec![0.0, v] } else { vec![v] };
            let e = refused(Request::SetObjective { kind, target }.check(&s));
            assert_eq!(e.field, "target");
            assert!(e.message.contains(bound) && e.message.contains(&format!("{v}")), "{}", e.message);
        }
        assert!(Request::SetObjective { kind: ObjectiveKind::Latent, target: vec![-10.0, 10.0] }.check(&s).is_ok());
        assert!(Request::SetObjective { kind: ObjectiveKind::Rates, target: vec![200.0] }.check(&s).is_ok());
        // The library has tasks 0, 1, 2.
        assert!(check(r#"{"command": "lock_task", "task": 2}"#).is_ok());
        let e = refused(check(r#"{"command": "lock_task", "task": 3}"#));
        assert!(e.field == "task" && e.message.contains("0 … 2"), "{e}");
        // Limits: tighter is fine (unset values stay the rig's), wider never.
        assert_eq!(
            check(r#"{"command": "set_limits", "upper": [0.5], "max_step": 0.1}"#).unwrap(),
            Request::SetLimits { lower: Some(vec![-1.0, 0.0]), upper: Some(vec![0.5, 0.5]), max_step: Some(0.1) }
        );
        for (json, field) in [
            (r#"{"command": "set_limits", "upper": [1.5]}"#, "upper"),
            (r#"{"command": "set_limits", "lower": [-2.0, 0.0]}"#, "lower"),
            (r#"{"command": "set_limits", "lower": [0.5], "upper": [0.2]}"#, "lower"),
            (r#"{"command": "set_limits", "max_step": 0.6}"#, "max_step"),
            (r#"{"command": "set_limits", "max_step": 0}"#, "max_step"),
            (r#"{"command": "set_limits", "upper": [0.5, 0.5, 0.5]}"#, "upper"),
        ] {
            let e = refused(check(json));
            assert_eq!(e.field, field, "{json}: {e}");
        }
        let e = refused(check(r#"{"command": "set_limits", "upper": [1.5]}"#));
        assert!(e.message.contains("only tighten"), "{e}");
        // A fallback vector inside the rig's bounds; only for `vector`.
        assert!(check(r#"{"command": "set_fallback", "fallback": "vector", "vector": [0.0, 1.0]}"#).is_ok());
        assert_eq!(refused(check(r#"{"command": "set_fallback", "fallback": "vector", "vector": [0.0, 3.0]}"#)).field, "vector");
        assert_eq!(refused(check(r#"{"command": "set_fallback", "fallback": "vector"}"#)).field, "vector");
        assert_eq!(refused(check(r#"{"command": "set_fallback", "fallback": "zero", "vector": [0.0, 0.0]}"#)).field, "vector");
        // A mark is an annotation.
        assert_eq!(refused(Request::Mark { text: "x".repeat(MAX_MARK_BYTES + 1) }.check(&s)).field, "text");
        // An identification session has no objective and no library.
        let probe = SessionLimits { probe: true, tasks: 0, ..session() };
        assert_eq!(refused(Request::UnlockTask.check(&probe)).field, "command");
        assert!(Request::Disarm.check(&probe).is_ok());
        let gpu = SessionLimits { lock_refusal: Some("the wgpu backend cannot hold a task".into()), ..session() };
        assert!(refused(Request::LockTask { task: 0 }.check(&gpu)).message.contains("wgpu"));
    }
}
