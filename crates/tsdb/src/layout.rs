//! Where a storage directory keeps each tenant's blocks, and the move from the old layout.
//!
//! `dir/@tenants/<name>/`: every tenant has a directory of its own under `@tenants`, a name no
//! tenant id can take (`@` is outside the tenant alphabet), so nothing a client chooses can land
//! beside the engine's own files (`checkpoint`, `checkpoint.tmp`). The name is the id itself when
//! it is made only of `[a-z0-9_-]` (the usual case, readable), otherwise `=` and the id in
//! lowercase base32 (RFC 4648, unpadded). The encoding is injective, and every name it makes is
//! lower case and never starts with `.`, so `.`-names, `..`-like names, names that differ only
//! in case and the names of the engine's own files can never collide, even on a case-insensitive
//! filesystem. The longest (150 bytes of id) takes 241 bytes, under the usual 255-byte limit.
//!
//! Before this layout tenant directories sat in `dir` itself, named by the raw id. [`migrate`]
//! moves each of them into place with one rename (atomic, so an interrupted migration just
//! resumes at the next open).

use crate::TsdbError;
use std::path::{Path, PathBuf};
use strata_model::Tenant;

/// The directory holding one directory per tenant. Not a valid tenant id, so the old layout
/// can never have used it.
pub const TENANTS_DIR: &str = "@tenants";

/// Marks a base32-encoded name (not in the tenant alphabet, so never a plain name's first byte).
const ENCODED: char = '=';

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The directory name of `tenant` inside [`TENANTS_DIR`].
pub fn dir_name(tenant: &Tenant) -> String {
    let id = tenant.as_str();
    if id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return id.to_string();
    }
    let mut out = String::with_capacity(1 + (id.len() * 8).div_ceil(5));
    out.push(ENCODED);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in id.as_bytes() {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The tenant whose directory is named `name`, if `name` is exactly what [`dir_name`] makes for
/// a valid tenant (anything else is not a tenant directory).
pub fn tenant_of(name: &str) -> Option<Tenant> {
    let tenant = match name.strip_prefix(ENCODED) {
        None => Tenant::new(name).ok()?,
        Some(code) => {
            let mut bytes = Vec::with_capacity(code.len() * 5 / 8);
            let (mut acc, mut bits) = (0u32, 0u32);
            for c in code.bytes() {
                let v = BASE32.iter().position(|&x| x == c)? as u32;
                acc = (acc << 5) | v;
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    bytes.push((acc >> bits) as u8);
                }
            }
            Tenant::new(std::str::from_utf8(&bytes).ok()?).ok()?
        }
    };
    // Only the canonical name: trailing bits, a plain-looking id encoded, or an upper-case
    // plain name would otherwise give a second directory for one tenant.
    (dir_name(&tenant) == name).then_some(tenant)
}

/// The directory of `tenant`'s blocks in the storage directory `dir`.
pub fn tenant_dir(dir: &Path, tenant: &Tenant) -> PathBuf {
    dir.join(TENANTS_DIR).join(dir_name(tenant))
}

/// Moves every tenant directory of the old layout (a directory of `dir` named by a valid
/// tenant id, the engine's file names included) into [`TENANTS_DIR`], creating it. Each move
/// is one rename; the directories are synced after. When the new place exists already (an
/// older binary wrote there after a migration), the blocks are moved one by one.
pub fn migrate(dir: &Path) -> Result<(), TsdbError> {
    let root = dir.join(TENANTS_DIR);
    if !root.is_dir() {
        std::fs::create_dir(&root).map_err(TsdbError::io(&root))?;
        sync_dir(dir)?;
    }
    let mut moved = 0usize;
    for entry in std::fs::read_dir(dir).map_err(TsdbError::io(dir))? {
        let entry = entry.map_err(TsdbError::io(dir))?;
        let old = entry.path();
        let is_dir = entry.file_type().map_err(TsdbError::io(&old))?.is_dir();
        let Some(tenant) = entry.file_name().to_str().and_then(|n| Tenant::new(n).ok()) else {
            continue;
        };
        if !is_dir {
            continue;
        }
        let new = tenant_dir(dir, &tenant);
        tracing::info!(from = %old.display(), to = %new.display(), "moving a tenant directory into the tenant namespace");
        if !new.exists() {
            std::fs::rename(&old, &new).map_err(TsdbError::io(&new))?;
        } else {
            for f in std::fs::read_dir(&old).map_err(TsdbError::io(&old))? {
                let from = f.map_err(TsdbError::io(&old))?.path();
                let to = new.join(from.file_name().expect("a directory entry has a name"));
                if to.exists() {
                    return Err(TsdbError::Corrupt {
                        path: from,
                        reason: format!("cannot migrate: {} exists already", to.display()),
                    });
                }
                std::fs::rename(&from, &to).map_err(TsdbError::io(&to))?;
            }
            sync_dir(&new)?;
            std::fs::remove_dir(&old).map_err(TsdbError::io(&old))?;
        }
        moved += 1;
    }
    if moved > 0 {
        sync_dir(&root)?;
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), tenants = moved, "migrated to the tenant namespace layout");
    }
    Ok(())
}

/// Creates a tenant's directory when it does not exist yet and makes its entry durable: a
/// checkpoint written after the tenant's first blocks must not outlive the directory holding
/// them.
pub fn ensure_dir(tdir: &Path) -> Result<(), TsdbError> {
    if tdir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(tdir).map_err(TsdbError::io(tdir))?;
    match tdir.parent() {
        Some(root) => sync_dir(root),
        None => Ok(()),
    }
}

/// Makes the entries of directory `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), TsdbError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TsdbError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> Tenant {
        Tenant::new(id).unwrap()
    }

    #[test]
    fn names_are_readable_when_safe_and_encoded_otherwise() {
        assert_eq!(dir_name(&t("default")), "default");
        assert_eq!(dir_name(&t("acme-prod_1")), "acme-prod_1");
        // "F" = 0x46 = 01000 110(00): "i" then "y".
        assert_eq!(dir_name(&t("F")), "=iy");
        assert!(dir_name(&t(".tmp")).starts_with('='));
        assert!(dir_name(&t("checkpoint.tmp")).starts_with('='));
        let long = "A".repeat(150);
        assert_eq!(dir_name(&t(&long)).len(), 241);
    }

    #[test]
    fn names_round_trip_and_never_collide_ignoring_case() {
        let ids = [
            "default",
            "checkpoint",
            "checkpoint.tmp",
            "@tenants",
            ".tmp",
            ".a",
            "...",
            "a.",
            "A",
            "a",
            "Acme",
            "aCME",
            "acme",
            "-",
            "_",
            "!*'()",
            "x".repeat(150).as_str(),
            "X".repeat(150).as_str(),
        ]
        .into_iter()
        .filter_map(|i| Tenant::new(i).ok())
        .collect::<Vec<_>>();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let n = dir_name(id);
            assert_eq!(tenant_of(&n).as_ref(), Some(id), "{n}");
            assert!(!n.starts_with('.'), "{n}");
            assert!(n.len() <= 255);
            assert!(seen.insert(n.to_ascii_lowercase()), "{n} collides");
        }
    }

    #[test]
    fn only_canonical_names_are_tenants() {
        for n in [
            "Default",
            "=mrswmylvnr2a",
            "=",
            "=iz",
            "=IY",
            "a.b",
            ".x",
            "=1",
        ] {
            assert_eq!(tenant_of(n), None, "{n}");
        }
    }

    #[test]
    fn migrates_old_tenant_directories_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        for id in ["default", "checkpoint", "Upper"] {
            std::fs::create_dir(d.path().join(id)).unwrap();
            std::fs::write(d.path().join(id).join("1_0_0.blk"), id).unwrap();
        }
        std::fs::write(d.path().join("checkpoint.tmp"), "a file, not a tenant").unwrap();
        // An interrupted earlier run already moved one half of "Upper".
        std::fs::create_dir_all(tenant_dir(d.path(), &t("Upper"))).unwrap();
        std::fs::rename(
            d.path().join("Upper/1_0_0.blk"),
            tenant_dir(d.path(), &t("Upper")).join("1_0_0.blk"),
        )
        .unwrap();
        std::fs::write(d.path().join("Upper/2_0_0.blk"), "two").unwrap();
        migrate(d.path()).unwrap();
        migrate(d.path()).unwrap();
        for id in ["default", "checkpoint", "Upper"] {
            let got = std::fs::read_to_string(tenant_dir(d.path(), &t(id)).join("1_0_0.blk"));
            assert_eq!(got.unwrap(), id);
            assert!(!d.path().join(id).exists());
        }
        assert!(tenant_dir(d.path(), &t("Upper")).join("2_0_0.blk").exists());
        assert!(d.path().join("checkpoint.tmp").is_file());
    }
}
