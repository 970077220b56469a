//! The catalogue's answers for the admin API: the leader's record in etcd and a diff, turned
//! into the protocol's types. Reads only; the catalogue itself is the leader duty's
//! (`kubedna_controlplane::duties::CatalogueDuty`).

use kubedna_catalogue::progress::Progress;
use kubedna_controlplane::duties::Planned;
use kubedna_proto::{
    CatalogueChange, CatalogueComponentStatus, CatalogueDiffResponse, CatalogueStatusResponse,
};

/// The record as `kubedna catalogue status` shows it; no record yet is an empty status, a
/// record that cannot be read here says why in `unavailable`.
pub fn status(record: Result<Option<Vec<u8>>, String>) -> CatalogueStatusResponse {
    let unavailable = |why: String| CatalogueStatusResponse {
        unavailable: Some(why),
        ..CatalogueStatusResponse::default()
    };
    let bytes = match record {
        Ok(Some(b)) => b,
        Ok(None) => return CatalogueStatusResponse::default(),
        Err(e) => return unavailable(e),
    };
    let p: Progress = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return unavailable(format!("the catalogue record in etcd is not readable: {e}")),
    };
    CatalogueStatusResponse {
        unavailable: None,
        version: p.catalogue_version,
        digest: p.catalogue_digest,
        term: p.term,
        last_pass_unix: p.last_pass_unix,
        last_error: p.last_error,
        components: p
            .components
            .into_iter()
            .map(|(name, r)| CatalogueComponentStatus {
                name,
                wanted_version: r.wanted_version,
                applied_version: r.applied_version,
                health: r.health.to_string(),
                last_error: r.last_error,
            })
            .collect(),
    }
}

pub fn diff(r: Result<(String, Vec<Planned>), String>) -> CatalogueDiffResponse {
    let (version, changes) = match r {
        Ok(v) => v,
        Err(e) => {
            return CatalogueDiffResponse {
                unavailable: Some(e),
                ..CatalogueDiffResponse::default()
            }
        }
    };
    CatalogueDiffResponse {
        unavailable: None,
        version,
        changes: changes
            .into_iter()
            .map(|c| CatalogueChange {
                action: c.action,
                component: c.component,
                object: c.object,
            })
            .collect(),
    }
}
