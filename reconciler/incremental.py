"""One cell's ruleset kept compiled, recompiling only the fragments a change touches.

`compile_ruleset(state)` (compile.py) is the reference: a pure function of the whole state. This
module gives the same `Ruleset` after every change (tests/test_incremental.py runs long random
message sequences through both and compares them at every step), at a cost that follows the
change instead of the size of the foundation. It works in the manner of Calico Felix's
calculation graph:

- `changed(key)` is called for every message that changed the store, and for every CNI
  registration. It keeps the foundation-wide indexes current (which security groups are bound to
  which spaces, which c2c policies point at which app and come from which) and answers whether the
  change touches this cell at all: an app's addresses matter only if the app is the source of a
  policy towards a local app, a group only if it applies to a local container's space and
  lifecycle (or is in use here), a c2c policy only if its destination is a local app. A change
  that touches nothing local costs those lookups and nothing else. What it touches is recorded
  as dirty fragments.
- `compile()` recompiles the dirty fragments from the store's current content and returns a new
  `Ruleset` that shares every unchanged chain's rules and set's elements with the previous one
  (`nft.diff` skips those by identity). Fragments are immutable values, so sharing them between
  this cache, the committed ruleset and a diff is safe by construction.

The local view (which containers, apps, spaces are here) is the one of the last `compile()`,
while the indexes are always current. That is enough: a change judged against a local view that
is one pass old either touches something local now, or touches only what a pending local change
will compile from the store's current content anyway (a container being added compiles its
bundle and its app's c2c chain from scratch).

Fragments:
    base            skeleton and deny sets: the config (a config change recompiles everything)
    sg-<guid>       a security group's sets, while some local bundle uses the group
    asg-<bundle>    a bundle's chain (and its own static-rule and egress-policy sets), while some
                    local container has the bundle
    c2c-<app>       a local app's ingress chain and set
    per container   its dispatch map entries, its containers6 element, its port-mapping chains
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, TypeVar

from events.models import C2CPolicy, CellConfig, CellState, Container, EgressPolicy, SecurityGroup
from nft import Touched
from nft.objects import AddrRange, Chain, Element, KeyField, Map, Rule, Ruleset, Set
from reconciler.compact import Addresses, StoredGroup, StoredPolicies
from reconciler.compile import (
    DISPATCH_MAPS,
    TABLE,
    Bundle,
    Lifecycle,
    RuleSource,
    _app_ingress_chain,
    _bundle_chain,
    _c2c_boxes,
    _deny_sets,
    _dispatch_elements,
    _skeleton,
    _source_sets,
    group_source,
    lifecycle_of,
    make_bundle,
    port_mappings,
    static_rules,
)
from reconciler.keys import Kind, StateKey

ElementKey = tuple[KeyField, ...]
_K = TypeVar("_K")
Matches = tuple[tuple[str, bool], ...]
# Maps and sets whose elements come from single containers.
_CONTAINER_SETS = (*DISPATCH_MAPS, "containers6", "port-mappings")


class DesiredState(Protocol):
    """What the compiler reads of the store (reconciler/store.py)."""

    @property
    def cell_id(self) -> str: ...
    @property
    def groups(self) -> Mapping[str, StoredGroup]: ...
    @property
    def last_group(self) -> tuple[StoredGroup, SecurityGroup] | None: ...
    @property
    def apps(self) -> Mapping[str, Addresses]: ...
    @property
    def c2c(self) -> Mapping[str, StoredPolicies]: ...
    @property
    def egress(self) -> list[EgressPolicy]: ...
    @property
    def config(self) -> CellConfig | None: ...
    @property
    def default_config(self) -> CellConfig: ...
    @property
    def containers(self) -> Mapping[str, Container]: ...
    @property
    def registered(self) -> Mapping[str, Container]: ...


@dataclass(frozen=True, slots=True)
class Fragment:
    """Chains with their rules and sets with their elements, compiled from one input. Never changed
    once built: its rule tuples and element mappings are shared as they are by every ruleset that
    holds the fragment."""

    chains: tuple[tuple[Chain, tuple[Rule, ...]], ...] = ()
    sets: tuple[tuple[Set | Map, Mapping[ElementKey, Element]], ...] = ()

    @classmethod
    def of(cls, rs: Ruleset) -> Fragment:
        """Freeze what was compiled into a scratch ruleset."""
        return cls(
            tuple((chain, tuple(rs.rules[name])) for name, chain in rs.chains.items()),
            tuple((s, MappingProxyType(dict(rs.elements[name]))) for name, s in rs.sets.items()),
        )


EMPTY = Fragment()

# A group's bindings: (lifecycle, space) pairs, space None for a global group.
Binding = tuple[Lifecycle, str | None]


def bindings(group: StoredGroup | None) -> frozenset[Binding]:
    if group is None:
        return frozenset()
    out: set[Binding] = {(Lifecycle.RUNNING, s) for s in group.running_spaces}
    out |= {(Lifecycle.STAGING, s) for s in group.staging_spaces}
    if group.running_global:
        out.add((Lifecycle.RUNNING, None))
    if group.staging_global:
        out.add((Lifecycle.STAGING, None))
    return frozenset(out)


@dataclass(slots=True)
class _Source:
    """A rule source compiled into its sets, and the bundles that use it."""

    source: RuleSource
    record: StoredGroup | None  # the store's group it was compiled from (None: a bundle's own rules)
    group: SecurityGroup | None  # that group, parsed
    matches: Matches
    fragment: Fragment
    users: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Bundle:
    """A bundle compiled into its chain, and the local containers that have it."""

    bundle: Bundle
    signature: tuple[tuple[str, Matches], ...]
    fragment: Fragment
    users: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Local:
    """One local container as compiled: its bundle and what it adds to the container maps."""

    container: Container
    bundle: str
    elements: tuple[Element, ...]
    port_chains: Fragment


class IncrementalCompiler:
    """Compiles one cell's ruleset from a `DesiredState`, incrementally (see the module docstring).

    Call `changed(key)` after every change the store reports (`DesiredStore.adopt` reports a
    replay's), and `compile()` to get the ruleset of the current state. The first `compile()`
    compiles everything.
    A `compile()` that raises (the reference raises on the same state) leaves everything to be
    recompiled from scratch by the next one."""

    def __init__(self, store: DesiredState) -> None:
        self._store = store
        self._full = True
        self._rs = Ruleset(TABLE)
        self._pass = _Pass(self._rs, {})
        self._touched: Touched | None = None  # changed since the last take_touched(); None: everything
        # Foundation-wide indexes, always current.
        self._groups_by: dict[Binding, set[str]] = defaultdict(set)
        self._bindings: dict[str, frozenset[Binding]] = {}
        self._c2c_seen: dict[str, StoredPolicies] = {}
        self._policies_to: dict[str, set[str]] = defaultdict(set)  # destination app -> c2c keys with policies to it
        self._destinations_of: dict[str, Counter[str]] = defaultdict(Counter)  # source app -> destination apps
        self._seen: dict[str, tuple[Container | None, Container | None]] = {}  # handle -> (NATS, registered)
        self._nats_ips: dict[ipaddress.IPv4Address, set[str]] = defaultdict(set)
        self._registered_ips: dict[ipaddress.IPv4Address, str] = {}
        # The local view, as of the last compile().
        self._local: dict[str, _Local] = {}
        self._apps: dict[str, set[str]] = defaultdict(set)  # local app -> handles
        self._spaces: dict[tuple[Lifecycle, str], set[str]] = defaultdict(set)  # (lifecycle, space) -> handles
        self._sources: dict[str, _Source] = {}
        self._bundles: dict[str, _Bundle] = {}
        self._ingress: dict[str, tuple[tuple[object, ...], Fragment]] = {}
        self._parsed: dict[str, tuple[StoredGroup, SecurityGroup]] = {}  # groups as models, for the next compile()
        self._base = EMPTY
        self._cfg = CellConfig()
        self._deny: tuple[str, ...] = ()
        # Dirty since the last compile().
        self._dirty_handles: set[str] = set()
        self._dirty_groups: set[str] = set()
        self._dirty_keys: set[Binding] = set()
        self._dirty_apps: set[str] = set()
        self._dirty_egress = False

    # ------------------------------------------------------------------ intake

    def changed(self, key: StateKey) -> bool:
        """The store's object `key` changed: keep the indexes current, remember what it makes dirty,
        and return whether it touches this cell (whether `compile()` would give anything new)."""
        if self._full:
            return True
        match key.kind:
            case Kind.CONTAINER:
                self._container_changed(key.id)
                return True
            case Kind.APP:
                touched = [d for d in self._destinations_of.get(key.id, ()) if d in self._apps]
                self._dirty_apps.update(touched)
                return bool(touched)
            case Kind.GROUP:
                return self._group_changed(key.id)
            case Kind.C2C:
                touched = [d for d in self._index_c2c(key.id) if d in self._apps]
                self._dirty_apps.update(touched)
                return bool(touched)
            case Kind.EGRESS:
                self._dirty_egress = True
                return bool(self._local)
            case Kind.CONFIG:
                self._full = True
                return True
        raise TypeError(f"unknown state key {key}")

    def _container_changed(self, handle: str) -> None:
        """A container of this cell changed, from NATS or the CNI plugin. A registration holding an
        address hides the NATS record of another container with that address (the store's rule, see
        `DesiredStore.local_containers`), so those records are looked at again too."""
        self._dirty_handles.add(handle)
        old_nats, old_registered = self._seen.pop(handle, (None, None))
        new = (self._store.containers.get(handle), self._store.registered.get(handle))
        if new != (None, None):
            self._seen[handle] = new
        new_nats, new_registered = new
        if old_nats is not new_nats:
            if old_nats is not None:
                _forget(self._nats_ips, old_nats.ip, handle)
            if new_nats is not None:
                self._nats_ips[new_nats.ip].add(handle)
        if old_registered is not new_registered:
            for c in (old_registered, new_registered):
                if c is not None:
                    self._dirty_handles |= self._nats_ips.get(c.ip, set())
            if old_registered is not None and self._registered_ips.get(old_registered.ip) == handle:
                del self._registered_ips[old_registered.ip]
            if new_registered is not None:
                self._registered_ips[new_registered.ip] = handle

    def _local_container(self, handle: str) -> Container | None:
        """The container `handle` as this cell has it: the CNI plugin's registration, else NATS's record
        unless a registration holds its address."""
        registered = self._store.registered.get(handle)
        if registered is not None:
            return registered
        nats = self._store.containers.get(handle)
        if nats is None or self._registered_ips.get(nats.ip, handle) != handle:
            return None
        return nats

    def _group_changed(self, guid: str) -> bool:
        old, new = self._bindings.get(guid, frozenset()), bindings(self._store.groups.get(guid))
        moved = old ^ new
        if moved:
            self._index_group(guid, old, new)
        if not self._cfg.dynamic_asgs:
            return False
        touched = {b for b in moved if self._is_local(b)}
        self._dirty_keys |= touched
        in_use = f"sg-{guid}" in self._sources
        if in_use:
            self._dirty_groups.add(guid)
        if in_use or touched:
            self._take_model(guid)
        return in_use or bool(touched)

    def _take_model(self, guid: str) -> None:
        """Keep the model the store's group `guid` came as, if the store still has it, for the next
        compile (which uses the group): the message was parsed already."""
        last, record = self._store.last_group, self._store.groups.get(guid)
        if last is not None and record is not None and last[0] is record:
            self._parsed[guid] = last

    def _is_local(self, binding: Binding) -> bool:
        lifecycle, space = binding
        if space is not None:
            return (lifecycle, space) in self._spaces
        return any(key[0] is lifecycle for key in self._spaces)

    def _index_group(self, guid: str, old: frozenset[Binding], new: frozenset[Binding]) -> None:
        for b in old - new:
            self._groups_by[b].discard(guid)
            if not self._groups_by[b]:
                del self._groups_by[b]
        for b in new - old:
            self._groups_by[b].add(guid)
        if new:
            self._bindings[guid] = new
        else:
            self._bindings.pop(guid, None)

    def _index_c2c(self, key: str) -> set[str]:
        """Re-index the policies of c2c message `key`; return the destination apps they concern."""
        stored_old, stored_new = self._c2c_seen.pop(key, None), self._store.c2c.get(key)
        if stored_new is not None:
            self._c2c_seen[key] = stored_new
        old = stored_old.pairs if stored_old is not None else ()
        new = stored_new.pairs if stored_new is not None else ()
        for source, destination in old:
            towards = self._policies_to[destination]
            towards.discard(key)
            if not towards:
                del self._policies_to[destination]
            counts = self._destinations_of[source]
            counts[destination] -= 1
            if counts[destination] <= 0:
                del counts[destination]
                if not counts:
                    del self._destinations_of[source]
        for source, destination in new:
            self._policies_to[destination].add(key)
            self._destinations_of[source][destination] += 1
        return {destination for _, destination in (*old, *new)}

    def _reindex(self) -> None:
        self._groups_by.clear()
        self._bindings.clear()
        for guid, group in self._store.groups.items():
            self._index_group(guid, frozenset(), bindings(group))
        self._c2c_seen.clear()
        self._policies_to.clear()
        self._destinations_of.clear()
        for key in self._store.c2c:
            self._index_c2c(key)
        self._seen.clear()
        self._nats_ips.clear()
        self._registered_ips.clear()
        for handle in self._store.containers.keys() | self._store.registered.keys():
            self._container_changed(handle)

    # ------------------------------------------------------------------ compile

    def compile(self) -> Ruleset:
        """The ruleset of the store's current content."""
        try:
            if self._full:
                self._rebuild()
            else:
                self._update()
        except Exception:
            self._full = True
            raise
        finally:
            self._parsed.clear()
        if self._full:
            self._touched = None
        elif self._touched is not None:
            self._touched |= self._pass.changes()
        self._full = False
        self._dirty_egress = False
        self._dirty_handles.clear()
        self._dirty_groups.clear()
        self._dirty_keys.clear()
        self._dirty_apps.clear()
        return self._rs

    @property
    def touched(self) -> Touched | None:
        """What compile() changed since the last take_touched(), left in place (None: everything)."""
        return self._touched

    def take_touched(self) -> Touched | None:
        """What compile() changed since the last call (None: it compiled everything anew): all that
        `nft.diff` needs to look at, against the ruleset returned by the compile() before that call."""
        touched, self._touched = self._touched, Touched()
        return touched

    @property
    def config(self) -> CellConfig:
        """The cell config the last compile() used."""
        return self._cfg

    @property
    def containers(self) -> int:
        """How many local containers the last compile() enforced."""
        return len(self._local)

    def local_handles(self) -> set[str]:
        """The handles of the local containers the last compile() enforced."""
        return set(self._local)

    def relevant_state(self) -> CellState:
        """Everything the last compile() used, and nothing else: the local containers, the groups
        that apply to them, the policies towards their apps and the addresses of those policies'
        sources, the egress policies and the config. `compile_ruleset` of it is the same ruleset,
        and it is a small fraction of a large foundation: what the reconciler saves for a restart."""
        store = self._store
        groups = sorted((src.group for src in self._sources.values() if src.group is not None), key=lambda g: g.guid)
        policies = [p for app in sorted(self._ingress) for p in self._policies_towards(app)]
        sources = sorted({p.source.id for p in policies})
        return CellState.model_construct(
            cell_id=store.cell_id,
            containers=sorted((local.container for local in self._local.values()), key=lambda c: c.handle),
            security_groups=groups,
            c2c_policies=policies,
            egress_policies=list(store.egress),
            app_instances={app: store.apps[app].addresses() for app in sources if app in store.apps},
            config=self._cfg,
        )

    def _rebuild(self) -> None:
        self._reindex()
        self._cfg = self._store.config or self._store.default_config
        scratch = Ruleset(TABLE)
        _skeleton(scratch, self._cfg, CellState(containers=[], config=self._cfg))
        _deny_sets(scratch, self._cfg)
        self._deny = tuple(name for name in scratch.sets if name.startswith("deny-"))
        self._base = Fragment.of(scratch)
        self._local.clear()
        self._apps.clear()
        self._spaces.clear()
        self._sources.clear()
        self._bundles.clear()
        self._ingress.clear()
        self._pass = _Pass(Ruleset(TABLE), {name: {} for name in _CONTAINER_SETS})
        self._pass.put(self._base)
        self._apply_containers(self._seen.keys())
        for app in list(self._apps):
            self._compile_ingress(app)
        self._finish()

    def _update(self) -> None:
        old = self._rs
        self._pass = _Pass(
            Ruleset(TABLE, dict(old.chains), dict(old.rules), dict(old.sets), dict(old.elements)),
            {name: old.elements[name] for name in _CONTAINER_SETS},
        )
        self._pass.shared = set(_CONTAINER_SETS)
        self._apply_containers(self._dirty_handles)
        for guid in self._dirty_groups:
            self._recompile_group(guid)
        again = set()
        if self._dirty_egress:
            again = set(self._local)
        for lifecycle, space in self._dirty_keys:
            if space is not None:
                again |= self._spaces.get((lifecycle, space), set())
            else:
                again |= {h for key, hs in self._spaces.items() if key[0] is lifecycle for h in hs}
        for handle in sorted(again):
            local = self._local.get(handle)
            if local is not None:
                self._place(local.container)
        for app in sorted(self._dirty_apps):
            self._compile_ingress(app)
        self._finish()

    def _finish(self) -> None:
        for name, elements in self._pass.maps.items():
            self._pass.rs.elements[name] = elements
        self._rs = self._pass.rs

    # --- containers

    def _apply_containers(self, handles: Iterable[str]) -> None:
        """Take these containers as the store has them now: drop the ones gone or changed, then place
        the new ones (in that order, so that an address passed from one container to another is free)."""
        now = {h: self._local_container(h) for h in handles}
        changed = sorted(h for h, c in now.items() if (h in self._local and self._local[h].container) is not c)
        for handle in changed:
            if handle in self._local:
                self._remove_container(handle)
        for handle in changed:
            c = now[handle]
            if c is not None:
                self._add_container(c)

    def _add_container(self, c: Container) -> None:
        self._apps[c.app_guid].add(c.handle)
        self._spaces[(lifecycle_of(c.workload), c.space_guid)].add(c.handle)
        self._dirty_apps.add(c.app_guid)  # its chain may be new, and its address is an instance of its app
        self._dirty_apps.update(d for d in self._destinations_of.get(c.app_guid, ()) if d in self._apps)
        self._place(c)

    def _remove_container(self, handle: str) -> None:
        local = self._local.pop(handle)
        c = local.container
        self._unplace(local)
        _forget(self._apps, c.app_guid, handle)
        _forget(self._spaces, (lifecycle_of(c.workload), c.space_guid), handle)
        self._dirty_apps.add(c.app_guid)
        self._dirty_apps.update(d for d in self._destinations_of.get(c.app_guid, ()) if d in self._apps)

    def _place(self, c: Container) -> None:
        """(Re)decide the bundle of a local container and its entries in the container maps."""
        bundle = self._bundle_for(c)
        old = self._local.get(c.handle)
        if old is not None and old.container is c and old.bundle == bundle.name:
            return
        self._acquire_bundle(bundle, c.handle)
        if old is not None:
            self._unplace(old)
        elements = list(_dispatch_elements(c, bundle.name))
        if c.ipv6 is not None:
            elements.append(Element("containers6", (AddrRange.single(c.ipv6),), None, c.handle))
        scratch = Ruleset(TABLE)
        for chain, rule, element in port_mappings(c):
            scratch.add_chain(chain)
            scratch.add_rule(rule)
            elements.append(element)
        local = _Local(c, bundle.name, tuple(elements), Fragment.of(scratch))
        self._pass.put(local.port_chains)
        for e in local.elements:
            self._pass.put_element(e)
        self._local[c.handle] = local

    def _unplace(self, local: _Local) -> None:
        self._pass.drop(local.port_chains)
        for e in local.elements:
            self._pass.drop_element(e)
        self._release_bundle(local.bundle, local.container.handle)

    def _bundle_for(self, c: Container) -> Bundle:
        lifecycle = lifecycle_of(c.workload)
        policies = [p for p in self._store.egress if p.applies_to(c.app_guid, c.space_guid, c.workload)]
        if not self._cfg.dynamic_asgs:
            return make_bundle(lifecycle, (), policies, static_rules(c), group_source)
        guids = self._groups_by.get((lifecycle, None), set()) | self._groups_by.get((lifecycle, c.space_guid), set())
        groups = [self._store.groups[g] for g in guids]
        return make_bundle(lifecycle, groups, policies, set(), self._group_source)

    def _group_source(self, record: StoredGroup) -> RuleSource:
        """A group's rule source, parsed once per group object."""
        entry = self._sources.get(f"sg-{record.guid}")
        if entry is not None and entry.record is record:
            return entry.source
        return group_source(self._group(record))

    def _group(self, record: StoredGroup) -> SecurityGroup:
        """The store's group `record` as a model: the one compiled from it, or parsed (once per compile)."""
        entry = self._sources.get(f"sg-{record.guid}")
        if entry is not None and entry.record is record and entry.group is not None:
            return entry.group
        parsed = self._parsed.get(record.guid)
        if parsed is None or parsed[0] is not record:
            parsed = self._parsed[record.guid] = (record, record.group())
        return parsed[1]

    # --- bundles and rule sources

    def _acquire_bundle(self, bundle: Bundle, handle: str) -> None:
        entry = self._bundles.get(bundle.name)
        if entry is None:
            for src in bundle.sources:
                self._acquire_source(src, bundle.name)
            entry = self._bundles[bundle.name] = self._compile_bundle(bundle)
            self._pass.put(entry.fragment)
        entry.users.add(handle)

    def _release_bundle(self, name: str, handle: str) -> None:
        entry = self._bundles[name]
        entry.users.discard(handle)
        if entry.users:
            return
        del self._bundles[name]
        self._pass.drop(entry.fragment)
        for src in entry.bundle.sources:
            source = self._sources[src.prefix]
            source.users.discard(name)
            if not source.users:
                del self._sources[src.prefix]
                self._pass.drop(source.fragment)

    def _compile_bundle(self, bundle: Bundle) -> _Bundle:
        signature = tuple((src.label, self._sources[src.prefix].matches) for src in bundle.sources)
        scratch = Ruleset(TABLE)
        _bundle_chain(scratch, bundle, signature, self._cfg, self._deny)
        return _Bundle(bundle, signature, Fragment.of(scratch))

    def _acquire_source(self, src: RuleSource, bundle: str) -> None:
        entry = self._sources.get(src.prefix)
        if entry is None:
            entry = self._sources[src.prefix] = self._compile_source(src)
            self._pass.put(entry.fragment)
        entry.users.add(bundle)

    def _compile_source(self, src: RuleSource) -> _Source:
        record = self._store.groups.get(src.prefix[3:]) if src.prefix.startswith("sg-") else None
        scratch = Ruleset(TABLE)
        matches = _source_sets(scratch, src, self._cfg)
        return _Source(src, record, None if record is None else self._group(record), matches, Fragment.of(scratch))

    def _recompile_group(self, guid: str) -> None:
        """A group in use changed: its sets, and the chains of the bundles using it if its matches
        or its name changed. (A changed binding moves containers between bundles elsewhere.)"""
        entry = self._sources.get(f"sg-{guid}")
        record = self._store.groups.get(guid)
        if entry is None or record is None or entry.record is record:
            return
        fresh = self._compile_source(group_source(self._group(record)))
        fresh.users = entry.users
        self._sources[fresh.source.prefix] = fresh
        self._pass.drop(entry.fragment)
        self._pass.put(fresh.fragment)
        if (fresh.source.label, fresh.matches) == (entry.source.label, entry.matches):
            return  # the usual edit: other elements in the same sets; the bundles' chains stay
        for name in sorted(entry.users):
            old = self._bundles[name]
            sources = tuple(fresh.source if s.prefix == fresh.source.prefix else s for s in old.bundle.sources)
            recompiled = self._compile_bundle(Bundle(old.bundle.lifecycle, sources, name))
            recompiled.users = old.users
            self._bundles[name] = recompiled
            self._pass.drop(old.fragment)
            self._pass.put(recompiled.fragment)

    # --- c2c ingress

    def _compile_ingress(self, app: str) -> None:
        """A local app's ingress chain from the policies towards it and its sources' addresses now."""
        old = self._ingress.get(app)
        if app not in self._apps:
            if old is not None:
                del self._ingress[app]
                self._pass.drop(old[1])
            return
        policies = self._policies_towards(app)
        sources = tuple(sorted({p.source.id for p in policies}))
        instances = {s: self._instances(s) for s in sources}
        boxes = _c2c_boxes(policies, instances)
        key = (boxes, sources)
        if old is not None and old[0] == key:
            return
        scratch = Ruleset(TABLE)
        _app_ingress_chain(scratch, app, boxes, sources, self._cfg)
        fragment = Fragment.of(scratch)
        if old is not None:
            self._pass.drop(old[1])
        self._pass.put(fragment)
        self._ingress[app] = (key, fragment)

    def _policies_towards(self, app: str) -> list[C2CPolicy]:
        """The c2c policies whose destination is `app`, parsed."""
        keys = sorted(self._policies_to.get(app, ()))
        return [p for k in keys for p in self._c2c_seen[k].policies() if p.destination.id == app]

    def _instances(self, app: str) -> set[ipaddress.IPv4Address]:
        """IPv4 overlay addresses of every instance of `app`: the foundation's, and the local ones."""
        stored = self._store.apps.get(app)
        out = set(stored.ipv4()) if stored is not None else set()
        out.update(self._local[h].container.ip for h in self._apps.get(app, ()) if h in self._local)
        return out


@dataclass(slots=True)
class _Pass:
    """The ruleset being assembled by one compile(), and what it changes: chains and sets by name, and
    the container maps by element. The container maps are copied on their first change: the previous
    ruleset, which a diff may still hold, keeps its own."""

    rs: Ruleset
    maps: dict[str, dict[ElementKey, Element]]
    shared: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)
    touched_elements: dict[str, set[ElementKey]] = field(default_factory=dict)

    def put_element(self, e: Element) -> None:
        self._map(e)[e.key] = e

    def drop_element(self, e: Element) -> None:
        """Take `e` out of its map, unless another element has its key by now."""
        if self.maps[e.set].get(e.key) is e:
            del self._map(e)[e.key]

    def _map(self, e: Element) -> dict[ElementKey, Element]:
        """The map of `e`, about to change at `e.key`."""
        name = e.set
        self.touched_elements.setdefault(name, set()).add(e.key)
        if name in self.shared:
            self.maps[name] = dict(self.maps[name])
            self.shared.discard(name)
        return self.maps[name]

    def changes(self) -> Touched:
        return Touched(
            frozenset(self.touched),
            {name: frozenset(keys) for name, keys in self.touched_elements.items()},
        )

    def put(self, fragment: Fragment) -> None:
        """Add a fragment's chains and sets, sharing its rule tuples and element mappings. (Ruleset types
        them as the lists and dicts it is built with; every reader of a ruleset only reads them.)"""
        rs = self.rs
        for chain, rules in fragment.chains:
            if chain.name in rs.chains:
                raise ValueError(f"chain {chain.name!r} defined twice")
            rs.chains[chain.name] = chain
            rs.rules[chain.name] = rules  # type: ignore[assignment]
            self.touched.add(chain.name)
        for s, elements in fragment.sets:
            if s.name in rs.sets:
                raise ValueError(f"set {s.name!r} defined twice")
            rs.sets[s.name] = s
            rs.elements[s.name] = elements  # type: ignore[assignment]
            self.touched.add(s.name)

    def drop(self, fragment: Fragment) -> None:
        rs = self.rs
        for chain, _ in fragment.chains:
            del rs.chains[chain.name]
            del rs.rules[chain.name]
            self.touched.add(chain.name)
        for s, _ in fragment.sets:
            del rs.sets[s.name]
            del rs.elements[s.name]
            self.touched.add(s.name)


def _forget(index: dict[_K, set[str]], key: _K, handle: str) -> None:
    index[key].discard(handle)
    if not index[key]:
        del index[key]
