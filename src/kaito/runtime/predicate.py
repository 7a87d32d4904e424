"""Predicates: which events reach a controller's queue.

A predicate sees each create/update/delete and answers whether it should enqueue.
They only filter noise (e.g. status-only updates of the object a controller itself
writes); they never replace reading the current state in the reconciler.
"""

from __future__ import annotations

from collections.abc import Callable

from kaito.runtime.meta import Obj


class Predicate:
    """Lets every event through; subclasses override what they filter."""

    def create(self, obj: Obj) -> bool:
        return True

    def update(self, old: Obj, new: Obj) -> bool:
        return True

    def delete(self, obj: Obj) -> bool:
        return True


class GenerationChanged(Predicate):
    """Drop updates that did not change ``metadata.generation``: status-only and
    metadata-only writes. (Objects without a generation, e.g. ConfigMaps, never pass
    an update through this predicate; do not use it for them.)"""

    def update(self, old: Obj, new: Obj) -> bool:
        return bool(old["metadata"].get("generation") != new["metadata"].get("generation"))


class ResourceVersionChanged(Predicate):
    """Drop updates whose resourceVersion did not change: the informer's periodic resync."""

    def update(self, old: Obj, new: Obj) -> bool:
        return bool(
            old["metadata"].get("resourceVersion") != new["metadata"].get("resourceVersion")
        )


class LabelChanged(Predicate):
    def update(self, old: Obj, new: Obj) -> bool:
        return bool(old["metadata"].get("labels") != new["metadata"].get("labels"))


class AnnotationChanged(Predicate):
    def update(self, old: Obj, new: Obj) -> bool:
        return bool(old["metadata"].get("annotations") != new["metadata"].get("annotations"))


class Funcs(Predicate):
    """A predicate from plain functions; an omitted one lets its events through."""

    def __init__(
        self,
        *,
        create: Callable[[Obj], bool] | None = None,
        update: Callable[[Obj, Obj], bool] | None = None,
        delete: Callable[[Obj], bool] | None = None,
    ) -> None:
        self._create, self._update, self._delete = create, update, delete

    def create(self, obj: Obj) -> bool:
        return self._create(obj) if self._create else True

    def update(self, old: Obj, new: Obj) -> bool:
        return self._update(old, new) if self._update else True

    def delete(self, obj: Obj) -> bool:
        return self._delete(obj) if self._delete else True


class _And(Predicate):
    def __init__(self, *ps: Predicate) -> None:
        self.ps = ps

    def create(self, obj: Obj) -> bool:
        return all(p.create(obj) for p in self.ps)

    def update(self, old: Obj, new: Obj) -> bool:
        return all(p.update(old, new) for p in self.ps)

    def delete(self, obj: Obj) -> bool:
        return all(p.delete(obj) for p in self.ps)


class _Or(_And):
    def create(self, obj: Obj) -> bool:
        return any(p.create(obj) for p in self.ps)

    def update(self, old: Obj, new: Obj) -> bool:
        return any(p.update(old, new) for p in self.ps)

    def delete(self, obj: Obj) -> bool:
        return any(p.delete(obj) for p in self.ps)


class _Not(Predicate):
    def __init__(self, p: Predicate) -> None:
        self.p = p

    def create(self, obj: Obj) -> bool:
        return not self.p.create(obj)

    def update(self, old: Obj, new: Obj) -> bool:
        return not self.p.update(old, new)

    def delete(self, obj: Obj) -> bool:
        return not self.p.delete(obj)


def and_(*ps: Predicate) -> Predicate:
    return _And(*ps)


def or_(*ps: Predicate) -> Predicate:
    return _Or(*ps)


def not_(p: Predicate) -> Predicate:
    return _Not(p)
