"""Components that describe themselves: an interface keeps the kinds of its implementations, which join it by
naming their kind in the class statement (`class TimmBackbone(Backbone, kind="timm")`).

What is derived from it instead of being listed by hand: the classes a saved model may build (`allowed_targets`),
the kind a saved head or stain normalizer is read back with (`of_kind`), and the config checks validation runs
(`check_config`, on the class a config's `_target_` names).
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Self, cast

from leukexp.errors import LeukexpError


class Registered:
    """Base of an interface whose implementations register under a kind.

    The first class deriving from it (the interface) gets its own registry; its subclasses that pass `kind=` join
    that registry. A class may also name other `_target_`s a config of it holds (`also_allows`, e.g. the getter of
    an offline weights file), which saved models may then build too.
    """

    kind: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Registered]]]
    also_allows: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not any("registry" in vars(base) for base in cls.__mro__[1:] if base is not Registered):
            cls.registry = {}  # the interface itself
        if kind is not None:
            known = cls.registry.get(kind)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise TypeError(f"{cls.__qualname__}: kind {kind!r} is taken by {known.__qualname__}")
            cls.kind = kind
            cls.registry[kind] = cls

    @classmethod
    def kinds(cls) -> dict[str, type]:
        """Every registered implementation of this interface, by kind."""
        return dict(cls.registry)

    @classmethod
    def of_kind(cls, kind: object, where: str) -> type[Self]:
        """The implementation saved as `kind`; anything else is one line naming `where` and the known kinds."""
        if not isinstance(kind, str) or kind not in cls.registry:
            raise LeukexpError(f"{where}: unknown kind {kind!r} (known: {', '.join(sorted(cls.registry))})")
        return cast(type[Self], cls.registry[kind])

    @classmethod
    def allowed_targets(cls) -> frozenset[str]:
        """The `_target_`s a saved config of this interface may name: each implementation and what it also allows."""
        return frozenset({target for c in cls.registry.values() for target in target_names(c)}
                         | {target for c in cls.registry.values() for target in c.also_allows})

    @classmethod
    def check_config(cls, config: dict[str, Any], key: str) -> None:
        """Cheap checks of a config of this class before any work (one line naming `key`); default: none."""


def target_names(cls: type) -> tuple[str, ...]:
    """The `_target_`s that name a class: its public name where its package exports it (`leukexp.backbones.
    TimmBackbone`, what configs and saved models write) and its module path (what models saved before the public
    names wrote)."""
    package = cls.__module__.rpartition(".")[0]
    exported = cls.__qualname__ in getattr(sys.modules.get(package), "__all__", ())
    return (*((f"{package}.{cls.__qualname__}",) if exported else ()), f"{cls.__module__}.{cls.__qualname__}")
