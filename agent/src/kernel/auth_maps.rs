//! Typed handles to the auth-call sensor's maps: the catalog as addresses (`ENDPOINTS`) and the
//! ports of its plaintext endpoints (`PLAINTEXT_PORTS`), and the exact connect counters
//! (`CONNECTS`). Its byte ring is taken separately (`ring`).
use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, MapData, MapError, PerCpuHashMap,
    },
    Ebpf,
};
use credwatch_common::auth::{
    maps, ConnectKey, Endpoint, EndpointKey, ENDPOINT_PLAINTEXT, PLAINTEXT_PORTS_WORDS,
};

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
    /// The array, and the words it holds (all zero when created).
    plaintext_ports: Mutex<(Array<MapData, u32>, Vec<u32>)>,
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
            plaintext_ports: Mutex::new((
                take(ebpf, maps::PLAINTEXT_PORTS)?,
                vec![0; PLAINTEXT_PORTS_WORDS as usize],
            )),
            routes: Mutex::new(BTreeMap::new()),
        })
    }

    /// Makes `ENDPOINTS` hold exactly `want`, and `PLAINTEXT_PORTS` its plaintext ports;
    /// returns the routes the kernel refused.
    pub fn set_routes(&self, want: &BTreeMap<Route, Endpoint>) -> Vec<(Route, MapError)> {
        let mut refused = self.set_plaintext_ports(want);
        let mut have = lock(&self.routes);
        let mut trie = lock(&self.endpoints);
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

    /// Sets the bit of every port a plaintext endpoint of `want` is on, clears the others (a
    /// word at a time, only those that change).
    fn set_plaintext_ports(&self, want: &BTreeMap<Route, Endpoint>) -> Vec<(Route, MapError)> {
        let mut words = vec![0u32; PLAINTEXT_PORTS_WORDS as usize];
        for (route, _) in want
            .iter()
            .filter(|(_, e)| e.flags & ENDPOINT_PLAINTEXT != 0)
        {
            words[usize::from(route.port >> 5)] |= 1 << (route.port & 31);
        }
        let mut guard = lock(&self.plaintext_ports);
        let (array, have) = &mut *guard;
        let mut refused = Vec::new();
        for (i, word) in words.into_iter().enumerate() {
            if have[i] == word {
                continue;
            }
            match array.set(i as u32, word, 0) {
                Ok(()) => have[i] = word,
                Err(e) => {
                    let port = (i * 32) as u16;
                    refused.push((
                        Route {
                            addr: [0; 16],
                            prefix: 0,
                            port,
                        },
                        e,
                    ));
                }
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
