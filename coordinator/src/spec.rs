//! A job spec checked: at submit in full, every frame of its schedules walked; read back from
//! the database, every limit again but that walk (it takes seconds on a long job, and uploads
//! read the spec every time).

use crate::error::{Error, Result};
use proto::v1;

/// The job spec a caller submits, checked the way the coordinator will check it: every frame
/// of its schedules included, which can take seconds (run it off the async runtime).
pub fn check_spec(spec: &v1::JobSpec) -> Result<proto::params::RenderParams> {
    let params = stored_params(spec)?;
    params.check_schedules()?;
    Ok(params)
}

/// The parameters of a job this coordinator accepted (`check_spec` at submit), read back from
/// its database: every limit checked again but the frame-by-frame walk of its schedules.
pub fn stored_params(spec: &v1::JobSpec) -> Result<proto::params::RenderParams> {
    proto::limits::check_len("name", &spec.name, proto::limits::MAX_NAME_LEN)?;
    let wire = spec.params.as_ref().ok_or_else(|| Error::invalid("params", "missing"))?;
    let params = proto::wire::params_walked_at_submit(wire)?;
    let kind = proto::wire::output_from_wire(spec.output)?;
    kind.check(params.width, params.height, params.fps)?;
    Ok(params)
}
