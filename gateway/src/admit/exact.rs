//! The one awaited step after the pure pipeline: `shared: exact` policies that allowed a
//! request locally ask Redis (bounded at 20 ms, skipped while Redis is unavailable). Kept
//! apart so `admit` stays pure; the proxy adapter calls it right after `admit`.

use super::{Admission, Refusal, RefusalKind};

/// Awaits Redis for the verdict's pending `exact` confirmations, if any.
/// A Redis "no" turns the admission (or a refused token's 401) into a 429.
#[allow(clippy::result_large_err)] // as admit::admit
pub async fn confirm(admitted: Result<Admission, Refusal>) -> Result<Admission, Refusal> {
    let (mut found, kind) = match admitted {
        Ok(found) => (found, None),
        Err(r) if r.kind == RefusalKind::RateLimited => return Err(r),
        Err(r) => (r.so_far, Some(r.kind)),
    };
    let Some(verdict) = found.verdict.as_mut().filter(|v| !v.confirm.is_empty()) else {
        return match kind {
            None => Ok(found),
            Some(kind) => Err(Refusal {
                kind,
                so_far: found,
            }),
        };
    };
    crate::admit::limits::shared::exact::confirm(verdict).await;
    match (verdict.is_rejected(), kind) {
        (true, _) => Err(Refusal {
            kind: RefusalKind::RateLimited,
            so_far: found,
        }),
        (false, None) => Ok(found),
        (false, Some(kind)) => Err(Refusal {
            kind,
            so_far: found,
        }),
    }
}
