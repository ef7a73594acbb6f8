//! What users are shown of the farm, whichever front end asks (the gRPC `JobService`, the
//! dashboard): the jobs a principal may see, with what only heartbeats know added, and the
//! workers. The rule of who sees which job lives in `Principal::job_owner_filter`.

use crate::auth::Principal;
use crate::db::JobId;
use crate::error::Result;
use crate::{db, now_ms, Coordinator};
use proto::v1;

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub(crate) enum JobQuery {
    /// All of them, oldest first (`ListJobs`).
    #[default]
    All,
    /// The newest `limit`, newest first, matching `state` (one of `db::STATE_FILTERS`, checked
    /// by the caller) when given (the dashboard).
    Newest { state: Option<String>, limit: u32 },
}

impl Coordinator {
    /// The jobs `principal` may see that match `query`.
    pub(crate) async fn jobs_for(&self, principal: &Principal, query: JobQuery) -> Result<Vec<v1::Job>> {
        let owner = principal.job_owner_filter().map(str::to_string);
        let mut jobs = self
            .db_read(move |c| match query {
                JobQuery::All => db::list(c, owner.as_deref()),
                JobQuery::Newest { state, limit } => db::recent(c, owner.as_deref(), state.as_deref(), limit),
            })
            .await?;
        for job in &mut jobs {
            if let Ok(seq) = db::job_seq(&job.id) {
                self.apply_live(seq, job);
            }
        }
        Ok(jobs)
    }

    /// One job as users see it.
    pub(crate) async fn job_view(&self, seq: JobId, include_segments: bool) -> Result<v1::Job> {
        self.job_view_page(seq, include_segments.then_some(db::SegmentPage::FIRST)).await
    }

    /// The job with a page of its segments.
    pub(crate) async fn job_view_page(&self, seq: JobId, page: Option<db::SegmentPage>) -> Result<v1::Job> {
        let mut job = self.db_read(move |c| db::job_page(c, seq, page)).await?;
        self.apply_live(seq, &mut job);
        Ok(job)
    }

    /// The workers seen lately (any user may look at the farm: names, devices, health).
    pub(crate) async fn workers(&self) -> Result<Vec<v1::Worker>> {
        let after = self.policy.quarantine_after;
        self.db_read(move |c| db::workers(c, after, now_ms())).await
    }

    /// Adds what only heartbeats know (warm-up, pace) to a job read from the database.
    fn apply_live(&self, seq: JobId, job: &mut v1::Job) {
        if let Some(live) = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(&seq) {
            job.warmup_done = live.warmup_done;
            job.warmup_total = live.warmup_total;
            if job.state == v1::JobState::Running as i32 {
                job.fps = live.pace.fps;
            }
        }
    }
}
