use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// Longest tenant id accepted, as in Cortex and Mimir.
pub const MAX_TENANT_LEN: usize = 150;

/// The owner of a write or a read. Tenants never see each other's data.
///
/// Taken from the `X-Scope-OrgID` header as Cortex and Mimir do; [`Tenant::default_tenant`] when
/// absent. Valid ids are 1 to 150 bytes of `[A-Za-z0-9!_.*'()-]`, and neither `.` nor `..`, so a
/// tenant id is always safe as a directory name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

/// Why a tenant id was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TenantError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is {0} bytes, longer than the limit of {MAX_TENANT_LEN}")]
    TooLong(usize),
    #[error("tenant id {0:?} contains a character outside [A-Za-z0-9!_.*'()-]")]
    BadChar(String),
    #[error("tenant id may not be \".\" or \"..\"")]
    Dots,
}

impl Tenant {
    /// The tenant of requests without an `X-Scope-OrgID` header.
    pub const DEFAULT: &'static str = "default";

    /// Validates and wraps a tenant id.
    pub fn new(id: &str) -> Result<Tenant, TenantError> {
        if id.is_empty() {
            return Err(TenantError::Empty);
        }
        if id.len() > MAX_TENANT_LEN {
            return Err(TenantError::TooLong(id.len()));
        }
        if id == "." || id == ".." {
            return Err(TenantError::Dots);
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!_.*'()-".contains(&b))
        {
            return Err(TenantError::BadChar(id.to_string()));
        }
        Ok(Tenant(Arc::from(id)))
    }

    /// The default tenant.
    pub fn default_tenant() -> Tenant {
        Tenant(Arc::from(Self::DEFAULT))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Tenant {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(Tenant::new("acme-prod_1").is_ok());
        assert_eq!(Tenant::new(""), Err(TenantError::Empty));
        assert_eq!(Tenant::new(".."), Err(TenantError::Dots));
        assert!(matches!(Tenant::new("a/b"), Err(TenantError::BadChar(_))));
        assert!(matches!(
            Tenant::new(&"x".repeat(151)),
            Err(TenantError::TooLong(151))
        ));
    }
}
