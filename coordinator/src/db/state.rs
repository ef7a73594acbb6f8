//! The states of jobs, segments and attempts: each defined once here, with its spelling in the
//! database, its wire value and the transitions it allows. The database holds them to it: the
//! schema's CHECK constraints allow only these spellings, and triggers made from
//! [`TRANSITIONS`](JobState::TRANSITIONS) refuse any other change of state, so a typo in a
//! statement or a missed case fails loudly instead of writing a state nobody handles.

use proto::v1;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Defines a state enum with its database spelling, `FromSql` (unknown spellings are errors)
/// and `ToSql`.
macro_rules! states {
    ($(#[$meta:meta])* $name:ident, $table:literal { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            /// The table whose `state` column holds these.
            pub const TABLE: &'static str = $table;

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// A wire value back; `None` for an unspecified or unknown one, which is no state
            /// at all (neither final nor unfinished).
            pub fn from_wire(value: i32) -> Option<Self> {
                Self::ALL.iter().copied().find(|s| s.to_wire() as i32 == value)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = value.as_str()?;
                Self::parse(s).ok_or_else(|| {
                    FromSqlError::Other(format!("unknown {} state {:?}", $table, crate::error::quoted_prefix(s)).into())
                })
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
    };
}

states! {
    /// queued -> running -> stitching -> succeeded; any unfinished state -> failed | cancelled;
    /// a failed job retried -> queued | running | stitching, by how much of it is done.
    JobState, "jobs" {
        Queued = "queued",
        Running = "running",
        Stitching = "stitching",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

states! {
    /// waiting -> ready -> running -> done. An attempt that ends badly puts its segment back to
    /// ready (retries left) or failed; a done segment whose end state proves unusable is made
    /// again (ready, or failed without retries); a segment whose start state proves unusable
    /// waits again. Cancelling or failing the job cancels what has not started; retrying a
    /// failed job makes everything not done wait again.
    SegmentState, "segments" {
        Waiting = "waiting",
        Ready = "ready",
        Running = "running",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

states! {
    /// running -> succeeded | failed | expired | cancelled; a succeeded attempt whose end state
    /// proves unusable -> failed.
    AttemptState, "attempts" {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Expired = "expired",
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// Every change of state the coordinator makes, as (from, to).
    pub const TRANSITIONS: &'static [(Self, Self)] = {
        use JobState::*;
        &[
            (Queued, Running),
            (Running, Stitching),
            (Stitching, Succeeded),
            (Queued, Failed),
            (Running, Failed),
            (Stitching, Failed),
            (Stitching, Running),
            (Queued, Cancelled),
            (Running, Cancelled),
            (Stitching, Cancelled),
            (Failed, Queued),
            (Failed, Running),
            (Failed, Stitching),
        ]
    };

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// For messages: "succeeded", "was cancelled", ...
    pub fn described(self) -> &'static str {
        match self {
            Self::Queued => "is queued",
            Self::Running => "is running",
            Self::Stitching => "is being stitched",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "was cancelled",
        }
    }

    pub fn to_wire(self) -> v1::JobState {
        match self {
            Self::Queued => v1::JobState::Queued,
            Self::Running => v1::JobState::Running,
            Self::Stitching => v1::JobState::Stitching,
            Self::Succeeded => v1::JobState::Succeeded,
            Self::Failed => v1::JobState::Failed,
            Self::Cancelled => v1::JobState::Cancelled,
        }
    }
}

impl SegmentState {
    pub const TRANSITIONS: &'static [(Self, Self)] = {
        use SegmentState::*;
        &[
            (Waiting, Ready),
            (Ready, Running),
            (Running, Done),
            (Running, Ready),
            (Running, Failed),
            (Running, Waiting),
            (Done, Ready),
            (Done, Failed),
            (Waiting, Cancelled),
            (Ready, Cancelled),
            (Running, Cancelled),
            (Failed, Waiting),
            (Cancelled, Waiting),
            (Ready, Waiting),
        ]
    };

    pub fn to_wire(self) -> v1::SegmentState {
        match self {
            Self::Waiting => v1::SegmentState::Waiting,
            Self::Ready => v1::SegmentState::Ready,
            Self::Running => v1::SegmentState::Running,
            Self::Done => v1::SegmentState::Done,
            Self::Failed => v1::SegmentState::Failed,
            Self::Cancelled => v1::SegmentState::Cancelled,
        }
    }
}

impl AttemptState {
    pub const TRANSITIONS: &'static [(Self, Self)] = {
        use AttemptState::*;
        &[(Running, Succeeded), (Running, Failed), (Running, Expired), (Running, Cancelled), (Succeeded, Failed)]
    };

    pub fn to_wire(self) -> v1::AttemptState {
        match self {
            Self::Running => v1::AttemptState::Running,
            Self::Succeeded => v1::AttemptState::Succeeded,
            Self::Failed => v1::AttemptState::Failed,
            Self::Expired => v1::AttemptState::Expired,
            Self::Cancelled => v1::AttemptState::Cancelled,
        }
    }
}

/// `state IN ('a', 'b', ...)` for a table's CHECK constraint.
fn allowed(states: impl Iterator<Item = &'static str>) -> String {
    let list: Vec<String> = states.map(|s| format!("'{s}'")).collect();
    format!("state IN ({})", list.join(", "))
}

pub fn job_check() -> String {
    allowed(JobState::ALL.iter().map(|s| s.as_str()))
}
pub fn segment_check() -> String {
    allowed(SegmentState::ALL.iter().map(|s| s.as_str()))
}
pub fn attempt_check() -> String {
    allowed(AttemptState::ALL.iter().map(|s| s.as_str()))
}

/// The triggers that refuse any change of state not in a table's transitions. Made anew at
/// every open, so they always match this code.
pub fn transition_triggers() -> String {
    fn one(table: &str, pairs: Vec<(&str, &str)>) -> String {
        let allowed: Vec<String> =
            pairs.iter().map(|(a, b)| format!("(OLD.state = '{a}' AND NEW.state = '{b}')")).collect();
        format!(
            "DROP TRIGGER IF EXISTS {table}_transition;
             CREATE TRIGGER {table}_transition BEFORE UPDATE OF state ON {table}
             WHEN NEW.state != OLD.state AND NOT ({})
             BEGIN
                 SELECT RAISE(ABORT, '{table}: a change of state the coordinator does not make');
             END;",
            allowed.join(" OR ")
        )
    }
    [
        one("jobs", JobState::TRANSITIONS.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()),
        one("segments", SegmentState::TRANSITIONS.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()),
        one("attempts", AttemptState::TRANSITIONS.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()),
    ]
    .join("\n")
}

/// A wire state's name for people (`running`), `unknown` for a value no state has.
pub fn wire_name<S: Copy>(value: i32, from_wire: fn(i32) -> Option<S>, as_str: fn(S) -> &'static str) -> &'static str {
    from_wire(value).map_or("unknown", as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state survives the trip through its spelling and its wire value; a spelling or a
    /// wire value no state has is refused, never read as some state.
    #[test]
    fn states_round_trip_and_unknown_values_are_refused() {
        for &s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(JobState::from_wire(s.to_wire() as i32), Some(s));
        }
        for &s in SegmentState::ALL {
            assert_eq!(SegmentState::parse(s.as_str()), Some(s));
            assert_eq!(SegmentState::from_wire(s.to_wire() as i32), Some(s));
        }
        for &s in AttemptState::ALL {
            assert_eq!(AttemptState::parse(s.as_str()), Some(s));
            assert_eq!(AttemptState::from_wire(s.to_wire() as i32), Some(s));
        }
        assert_eq!(JobState::from_wire(0), None, "unspecified is no state, and not final");
        assert_eq!(JobState::parse("Cancelled"), None);
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let read = conn.query_row("SELECT 'canceled'", [], |r| r.get::<_, JobState>(0));
        assert!(read.unwrap_err().to_string().contains("unknown jobs state"));
    }
}
