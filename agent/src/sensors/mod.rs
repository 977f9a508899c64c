//! Sensors: each pairs its kernel hooks with the userspace stages that give their data meaning.
//! `file`: which processes read which credential files. `auth`: outbound authentication calls
//! (to come).
pub mod auth;
pub mod file;
