//! Run parameters and placeholder resolution.
//!
//! GitLab's manifests carry Python-style placeholders (`{EXECUTION_DATE}`, `{HOURS}`,
//! `{BEGIN_TIMESTAMP}`, `{END_TIMESTAMP}`, `{INTERNAL_PROJECT_IDS}`, ...). They are
//! resolved here from command flags first, then from the environment variables GitLab's
//! Airflow tasks set (`EXECUTION_DATE`, `HOURS`, `DAYS`, `LAST_LOADED`,
//! `TASK_INSTANCE`). The clock is passed in, never read here, so windows are testable.
//!
//! Rules:
//! - window = `[EXECUTION_DATE - HOURS|DAYS, EXECUTION_DATE]`;
//! - with `LAST_LOADED`: begin = LAST_LOADED - 30 min, end = min(EXECUTION_DATE,
//!   begin + HOURS|DAYS); the run reports `end` so the next run passes it back;
//! - an unresolved placeholder is an error naming it; a placeholder whose name looks
//!   like a secret (`PASS`, `SECRET`, `TOKEN`, `KEY`) is refused outright.

use crate::error::{Error, Result};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use std::collections::BTreeMap;

/// The placeholders that make a table incremental (they bound a time window).
pub const WINDOW_PLACEHOLDERS: [&str; 3] = ["EXECUTION_DATE", "BEGIN_TIMESTAMP", "END_TIMESTAMP"];
/// Placeholders that only make sense inside a window condition; a full-table query
/// drops the conditions that use any of these.
pub const WINDOW_RELATED: [&str; 5] = [
    "EXECUTION_DATE",
    "BEGIN_TIMESTAMP",
    "END_TIMESTAMP",
    "HOURS",
    "DAYS",
];

/// Inputs of one run, as given on the command line or in a load request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunParams {
    /// End of the window; defaults to the run's start time.
    pub execution_date: Option<DateTime<Utc>>,
    /// Window length in hours (exclusive with `days`).
    pub hours: Option<u32>,
    /// Window length in days (exclusive with `hours`).
    pub days: Option<u32>,
    /// The end the previous run reached; the window restarts 30 minutes before it.
    pub last_loaded: Option<DateTime<Utc>>,
    /// Written to `_task_instance` for tables with `advanced_metadata: true`.
    pub task_instance: Option<String>,
    /// Values for other placeholders (`--var NAME=VALUE`).
    pub vars: BTreeMap<String, String>,
}

/// A source of environment variables (the process environment, or a map in tests).
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Parse an RFC 3339 timestamp, or a date / naive timestamp taken as UTC (Airflow
/// passes `2021-09-28T00:00:00+00:00`; people type `2021-09-28`).
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(Error::Params(format!(
        "{s:?} is not an RFC 3339 timestamp or a YYYY-MM-DD date"
    )))
}

impl RunParams {
    /// Fill what the flags left unset from GitLab's environment variables.
    pub fn with_env_fallback(mut self, env: &dyn Env) -> Result<Self> {
        if self.execution_date.is_none() {
            if let Some(v) = env.var("EXECUTION_DATE") {
                self.execution_date = Some(parse_instant(&v)?);
            }
        }
        if self.hours.is_none() && self.days.is_none() {
            if let Some(v) = env.var("HOURS") {
                self.hours = Some(parse_count("HOURS", &v)?);
            } else if let Some(v) = env.var("DAYS") {
                self.days = Some(parse_count("DAYS", &v)?);
            }
        }
        if self.last_loaded.is_none() {
            if let Some(v) = env.var("LAST_LOADED") {
                self.last_loaded = Some(parse_instant(&v)?);
            }
        }
        if self.task_instance.is_none() {
            self.task_instance = env.var("TASK_INSTANCE");
        }
        if self.hours.is_some() && self.days.is_some() {
            return Err(Error::Params("give --hours or --days, not both".into()));
        }
        Ok(self)
    }

    /// The window length, if any was given.
    fn length(&self) -> Option<Duration> {
        self.hours
            .map(|h| Duration::hours(h.into()))
            .or(self.days.map(|d| Duration::days(d.into())))
    }

    /// The time window of incremental tables; `now` is the run's start time.
    pub fn window(&self, now: DateTime<Utc>) -> Result<Window> {
        let execution_date = self.execution_date.unwrap_or(now);
        let (begin, end) = match (self.last_loaded, self.length()) {
            (Some(last), len) => {
                let begin = last - Duration::minutes(30);
                let end = match len {
                    Some(l) => std::cmp::min(execution_date, begin + l),
                    None => execution_date,
                };
                (begin, end)
            }
            (None, Some(l)) => (execution_date - l, execution_date),
            (None, None) => {
                return Err(Error::Params(
                    "incremental tables need a window: --hours N or --days N \
                     (or HOURS / DAYS), or --last-loaded"
                        .into(),
                ))
            }
        };
        if begin > end {
            return Err(Error::Params(format!(
                "window begin {begin} is after its end {end} (LAST_LOADED after EXECUTION_DATE?)"
            )));
        }
        Ok(Window {
            execution_date,
            begin,
            end,
        })
    }
}

fn parse_count(name: &str, v: &str) -> Result<u32> {
    v.trim()
        .parse()
        .map_err(|_| Error::Params(format!("{name}={v:?} is not a whole number")))
}

/// A resolved time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub execution_date: DateTime<Utc>,
    pub begin: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Format an instant for a SQL literal: UTC, ISO date and time, microseconds only when
/// present. GitLab's queries cast to `::timestamp` (UTC wall time), so no offset.
pub fn sql_instant(t: DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    s.trim_end_matches('Z').replace('T', " ")
}

/// Is this placeholder name refused because it looks like a secret?
pub fn is_secret_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["PASS", "SECRET", "TOKEN", "KEY"]
        .iter()
        .any(|s| n.contains(s))
}

/// The `{NAME}` placeholders of a text, in order of appearance, without repeats.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    scan(text, |name| {
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
        None
    });
    out
}

/// Replace `{NAME}` placeholders; `f` returns the replacement or `None` to keep it.
pub fn substitute(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    scan(text, &mut f)
}

fn scan(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let end = after
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map(|(i, _)| i)
            .unwrap_or(after.len());
        let name = &after[..end];
        let is_ident = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if is_ident && after[end..].starts_with('}') {
            match f(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Resolves placeholders of one run.
pub struct Resolver<'a> {
    params: &'a RunParams,
    env: &'a dyn Env,
    window: Option<Window>,
}

impl<'a> Resolver<'a> {
    /// `window` is `None` when the run has no window (then window placeholders are
    /// errors).
    pub fn new(params: &'a RunParams, env: &'a dyn Env, window: Option<Window>) -> Self {
        Resolver {
            params,
            env,
            window,
        }
    }

    /// The value of one placeholder.
    pub fn value(&self, table: &str, name: &str) -> Result<String> {
        let err = |reason: &str| Error::Placeholder {
            table: table.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if is_secret_like(name) {
            return Err(err(
                "names a secret-like variable and is refused (placeholders must not splice secrets into queries)",
            ));
        }
        let w = self.window;
        let need_window =
            || w.ok_or_else(|| err("needs a time window (--hours/--days/--execution-date)"));
        match name {
            "EXECUTION_DATE" => return Ok(sql_instant(need_window()?.execution_date)),
            "BEGIN_TIMESTAMP" => return Ok(sql_instant(need_window()?.begin)),
            "END_TIMESTAMP" => return Ok(sql_instant(need_window()?.end)),
            "HOURS" => {
                if let Some(h) = self.params.hours {
                    return Ok(h.to_string());
                }
                if let Some(d) = self.params.days {
                    return Ok((u64::from(d) * 24).to_string());
                }
            }
            "DAYS" => {
                if let Some(d) = self.params.days {
                    return Ok(d.to_string());
                }
                if let Some(h) = self.params.hours.filter(|h| h % 24 == 0) {
                    return Ok((h / 24).to_string());
                }
            }
            _ => {}
        }
        if let Some(v) = self.params.vars.get(name) {
            return Ok(v.clone());
        }
        if let Some(v) = self.env.var(name) {
            return Ok(v);
        }
        Err(err(
            "is not set (pass --var NAME=VALUE or set the environment variable)",
        ))
    }

    /// Resolve every placeholder of `text`, except those `keep` says to leave.
    pub fn resolve(&self, table: &str, text: &str, keep: &dyn Fn(&str) -> bool) -> Result<String> {
        let mut first_err = None;
        let out = substitute(text, |name| {
            if keep(name) {
                return None;
            }
            match self.value(table, name) {
                Ok(v) => Some(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                    None
                }
            }
        });
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_instant(s).unwrap()
    }

    #[test]
    fn hours_window_ends_at_execution_date() {
        let p = RunParams {
            execution_date: Some(t("2024-01-02T00:00:00Z")),
            hours: Some(12),
            ..Default::default()
        };
        let w = p.window(t("2030-01-01T00:00:00Z")).unwrap();
        assert_eq!(w.begin, t("2024-01-01T12:00:00Z"));
        assert_eq!(w.end, t("2024-01-02T00:00:00Z"));
    }

    #[test]
    fn last_loaded_restarts_thirty_minutes_early_and_caps_at_execution_date() {
        let p = RunParams {
            execution_date: Some(t("2024-01-02T00:00:00Z")),
            hours: Some(6),
            last_loaded: Some(t("2024-01-01T10:00:00Z")),
            ..Default::default()
        };
        let w = p.window(t("2030-01-01T00:00:00Z")).unwrap();
        assert_eq!(w.begin, t("2024-01-01T09:30:00Z"));
        assert_eq!(w.end, t("2024-01-01T15:30:00Z"));
        let p = RunParams {
            last_loaded: Some(t("2024-01-01T22:00:00Z")),
            ..p
        };
        assert_eq!(
            p.window(t("2030-01-01T00:00:00Z")).unwrap().end,
            t("2024-01-02T00:00:00Z")
        );
    }

    #[test]
    fn environment_fills_what_flags_left_unset() {
        let env: BTreeMap<String, String> = [
            ("EXECUTION_DATE", "2021-09-28T00:00:00+00:00"),
            ("DAYS", "2"),
            ("TASK_INSTANCE", "dag.task.1"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let p = RunParams::default().with_env_fallback(&env).unwrap();
        assert_eq!(p.days, Some(2));
        assert_eq!(p.task_instance.as_deref(), Some("dag.task.1"));
        let w = p.window(Utc::now()).unwrap();
        assert_eq!(w.begin, t("2021-09-26T00:00:00Z"));
    }

    #[test]
    fn hours_and_days_together_are_refused() {
        let p = RunParams {
            hours: Some(1),
            days: Some(1),
            ..Default::default()
        };
        assert!(p.with_env_fallback(&BTreeMap::new()).is_err());
    }

    #[test]
    fn a_secret_like_placeholder_is_refused_even_when_set() {
        let env: BTreeMap<String, String> = [("DB_PASS".to_string(), "hunter2".to_string())].into();
        let p = RunParams::default();
        let r = Resolver::new(&p, &env, None);
        let e = r
            .resolve("t", "select '{DB_PASS}'", &|_| false)
            .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("DB_PASS") && m.contains("refused"), "{m}");
        assert!(!m.contains("hunter2"));
    }

    #[test]
    fn unresolved_placeholder_is_named() {
        let p = RunParams::default();
        let env = BTreeMap::new();
        let r = Resolver::new(&p, &env, None);
        let e = r
            .resolve("t", "x in {INTERNAL_PROJECT_IDS}", &|_| false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("{INTERNAL_PROJECT_IDS}"), "{e}");
    }

    #[test]
    fn vars_win_over_environment_and_braces_that_are_not_names_stay() {
        let env: BTreeMap<String, String> = [("IDS".to_string(), "(9)".to_string())].into();
        let mut p = RunParams::default();
        p.vars.insert("IDS".into(), "(1,2)".into());
        let r = Resolver::new(&p, &env, None);
        let q = r
            .resolve("t", "select '{1,2}'::int[] where x in {IDS}", &|_| false)
            .unwrap();
        assert_eq!(q, "select '{1,2}'::int[] where x in (1,2)");
    }

    #[test]
    fn instants_render_as_utc_wall_time() {
        assert_eq!(
            sql_instant(t("2024-01-02T03:04:05+02:00")),
            "2024-01-02 01:04:05"
        );
        assert_eq!(
            sql_instant(t("2024-01-02T03:04:05.25Z")),
            "2024-01-02 03:04:05.250"
        );
    }
}
