//! Ids: each a row of its table, written `job-N` and `worker-N` only where people and the API
//! see them (attempt ids travel as plain numbers).

/// The number in an id written exactly as `JobId` and `WorkerId` write it: decimal digits, no
/// sign, no leading zero, no spaces. `job-01` and `job-+1` are not other spellings of job-1 (a
/// `delete job-+2` once deleted job-2): they name nothing.
pub fn parse_id(id: &str, prefix: &str) -> Option<i64> {
    let n = id.strip_prefix(prefix)?;
    let canonical =
        (1..=18).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
    if canonical {
        n.parse().ok()
    } else {
        None
    }
}

/// An id: the row of a table, written `<prefix>-N` only where people and the API see it.
macro_rules! row_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl $name {
            /// The id as the API writes it, spelled exactly as `Display` writes it (see
            /// `parse_id`); anything else names nothing.
            pub fn parse(id: &str) -> Option<Self> {
                parse_id(id, concat!($prefix, "-")).map(Self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($prefix, "-{}"), self.0)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }
    };
}

row_id! {
    /// A registered worker: its row in `workers`, which `attempts.worker` and
    /// `segments.preferred_worker` reference.
    WorkerId, "worker"
}

row_id! {
    /// A job: its row in `jobs`.
    JobId, "job"
}

/// An attempt: its row in `attempts`, and the fencing token a worker names it by (a plain
/// number on the wire, so it is written as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AttemptId(pub u64);

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl rusqlite::ToSql for AttemptId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        // Rows count from 1 and stay below 2^63; a larger number from the wire names no row.
        Ok(rusqlite::types::ToSqlOutput::from(i64::try_from(self.0).unwrap_or(-1)))
    }
}

impl rusqlite::types::FromSql for AttemptId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let n = i64::column_result(value)?;
        u64::try_from(n).map(Self).map_err(|_| rusqlite::types::FromSqlError::OutOfRange(n))
    }
}
