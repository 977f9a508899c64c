//! Typed handles to the auth-call sensor's maps: the catalog as addresses (`ENDPOINTS`) and the
//! exact connect counters (`CONNECTS`). Its byte ring is taken separately (`ring`).
use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        MapData, MapError, PerCpuHashMap,
    },
    Ebpf,
};
use credwatch_common::auth::{maps, ConnectKey, Endpoint, EndpointKey};

use super::{maps::take, Result};

/// One trie entry: the first `prefix` bits of the address (0-128) on one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub addr: [u8; 16],
    pub prefix: u8,
    pub port: u16,
}

impl Route {
    fn key(&self) -> Key<EndpointKey> {
        Key::new(
            16 + u32::from(self.prefix),
            EndpointKey {
                port: self.port.to_be_bytes(),
                addr: self.addr,
                _pad: [0; 2],
            },
        )
    }
}

pub struct AuthMaps {
    endpoints: Mutex<LpmTrie<MapData, EndpointKey, Endpoint>>,
    connects: Mutex<PerCpuHashMap<MapData, ConnectKey, u64>>,
    /// What `endpoints` holds now, to apply only the difference.
    routes: Mutex<BTreeMap<Route, Endpoint>>,
}

impl std::fmt::Debug for AuthMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthMaps")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AuthMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            endpoints: Mutex::new(take(ebpf, maps::ENDPOINTS)?),
            connects: Mutex::new(take(ebpf, maps::CONNECTS)?),
            routes: Mutex::new(BTreeMap::new()),
        })
    }

    /// Makes `ENDPOINTS` hold exactly `want`; returns the routes the kernel refused.
    pub fn set_routes(&self, want: &BTreeMap<Route, Endpoint>) -> Vec<(Route, MapError)> {
        let mut have = lock(&self.routes);
        let mut trie = lock(&self.endpoints);
        let mut refused = Vec::new();
        for route in have.keys().filter(|r| !want.contains_key(r)) {
            let _ = trie.remove(&route.key());
        }
        have.retain(|r, _| want.contains_key(r));
        for (route, ep) in want {
            if have.get(route) == Some(ep) {
                continue;
            }
            match trie.insert(&route.key(), *ep, 0) {
                Ok(()) => {
                    have.insert(*route, *ep);
                }
                Err(e) => refused.push((*route, e)),
            }
        }
        refused
    }

    /// Every connect counter, summed over CPUs.
    pub fn connect_totals(&self) -> Vec<(ConnectKey, u64)> {
        lock(&self.connects)
            .iter()
            .flatten()
            .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
            .collect()
    }

    pub fn forget_connects(&self, keys: &[ConnectKey]) {
        let mut connects = lock(&self.connects);
        for k in keys {
            let _ = connects.remove(k);
        }
    }
}
