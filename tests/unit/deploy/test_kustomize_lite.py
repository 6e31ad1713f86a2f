"""The kustomize subset renderer: strategic merge, patches, transformers, errors."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml


def test_merge_by_name_updates_appends_and_deletes(kustomize: ModuleType) -> None:
    base: dict[str, Any] = {
        "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]
    }
    patch = {
        "containers": [
            {
                "name": "a",
                "env": [{"name": "X", "value": "9"}, {"name": "Y", "$patch": "delete"}, {"name": "Z"}],
            },
            {"name": "b", "image": "img"},
        ]
    }
    out = kustomize.strategic_merge(base, patch)
    assert out["containers"][0]["env"] == [{"name": "X", "value": "9"}, {"name": "Z"}]
    assert out["containers"][1] == {"name": "b", "image": "img"}
    assert base["containers"][0]["env"][0]["value"] == "1", "the base must not be modified"


def test_null_deletes_a_key_and_plain_lists_are_replaced(kustomize: ModuleType) -> None:
    base = {"probe": {"grpc": {"port": 1}, "periodSeconds": 5}, "args": ["a", "b"]}
    out = kustomize.strategic_merge(
        base, {"probe": {"grpc": None, "exec": {"command": ["x"]}}, "args": ["c"]}
    )
    assert out == {"probe": {"periodSeconds": 5, "exec": {"command": ["x"]}}, "args": ["c"]}


def test_merge_by_name_requires_names(kustomize: ModuleType) -> None:
    with pytest.raises(kustomize.KustomizeError):
        kustomize.strategic_merge({"x": {"env": [{"name": "A"}]}}, {"x": {"env": [{"value": "v"}]}})


def test_container_ports_merge_by_container_port(kustomize: ModuleType) -> None:
    base = {"containers": [{"name": "s", "ports": [{"name": "grpc", "containerPort": 50051}]}]}
    renamed = kustomize.strategic_merge(
        base, {"containers": [{"name": "s", "ports": [{"name": "grpc-tls", "containerPort": 50051}]}]}
    )
    assert renamed["containers"][0]["ports"] == [{"name": "grpc-tls", "containerPort": 50051}]
    moved = kustomize.strategic_merge(
        base, {"containers": [{"name": "s", "ports": [{"name": "grpc", "containerPort": 50061}]}]}
    )
    assert moved["containers"][0]["ports"] == [
        {"name": "grpc", "containerPort": 50051},
        {"name": "grpc", "containerPort": 50061},
    ], "a different containerPort is another port, whatever its name"
    with pytest.raises(kustomize.KustomizeError, match="containerPort"):
        kustomize.strategic_merge(base, {"containers": [{"name": "s", "ports": [{"name": "grpc"}]}]})


def test_service_ports_merge_by_port_and_mounts_by_path(kustomize: ModuleType) -> None:
    service = {"spec": {"ports": [{"name": "grpc", "port": 50051}, {"name": "metrics", "port": 9101}]}}
    out = kustomize.strategic_merge(
        service, {"spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}}
    )
    assert out["spec"]["ports"] == [
        {"name": "grpc", "port": 50051, "appProtocol": "grpc"},
        {"name": "metrics", "port": 9101},
    ]
    pod = {"containers": [{"name": "s", "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}]}
    out = kustomize.strategic_merge(
        pod, {"containers": [{"name": "s", "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]}]}
    )
    assert out["containers"][0]["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]


def test_network_policy_ports_are_replaced(kustomize: ModuleType) -> None:
    policy = {"spec": {"ingress": [{"ports": [{"port": 1}, {"port": 2}]}]}}
    out = kustomize.strategic_merge(policy, {"spec": {"ingress": [{"ports": [{"port": 3}]}]}})
    assert out["spec"]["ingress"] == [{"ports": [{"port": 3}]}]


def _write(folder: Path, files: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(yaml.safe_dump(content) if not isinstance(content, str) else content)


DEPLOY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"tier": "x"}},
    "spec": {
        "replicas": 1,
        "template": {"spec": {"containers": [{"name": "server", "image": "llmesh/web:1"}]}},
    },
}


def test_overlay_with_component_namespace_labels_images_replicas(
    kustomize: ModuleType, tmp_path: Path
) -> None:
    _write(tmp_path / "base", {"kustomization.yaml": {"resources": ["d.yaml"]}, "d.yaml": DEPLOY})
    _write(
        tmp_path / "comp",
        {
            "kustomization.yaml": {
                "kind": "Component",
                "patches": [{"path": "p.yaml", "target": {"kind": "Deployment", "labelSelector": "tier=x"}}],
            },
            "p.yaml": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "ignored"},
                "spec": {"template": {"spec": {"containers": [{"name": "server", "env": [{"name": "E"}]}]}}},
            },
        },
    )
    _write(
        tmp_path / "ov",
        {
            "kustomization.yaml": {
                "namespace": "ns",
                "resources": ["../base"],
                "components": ["../comp"],
                "labels": [{"pairs": {"team": "t"}, "includeTemplates": True}],
                "images": [{"name": "llmesh/web", "newName": "reg/web", "digest": "sha256:ab"}],
                "replicas": [{"name": "web", "count": 3}],
            }
        },
    )
    (out,) = kustomize.build(tmp_path / "ov")
    assert out["metadata"]["namespace"] == "ns"
    assert out["metadata"]["labels"] == {"tier": "x", "team": "t"}
    assert out["spec"]["template"]["metadata"]["labels"] == {"team": "t"}
    assert out["spec"]["replicas"] == 3
    container = out["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/web@sha256:ab"
    assert container["env"] == [{"name": "E"}]


def test_unmatched_patch_unknown_field_and_duplicates_fail(kustomize: ModuleType, tmp_path: Path) -> None:
    _write(tmp_path / "a", {"kustomization.yaml": {"resources": ["d.yaml"], "vars": []}, "d.yaml": DEPLOY})
    with pytest.raises(kustomize.KustomizeError, match="unsupported fields"):
        kustomize.build(tmp_path / "a")
    patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other}\n"
    _write(
        tmp_path / "b",
        {"kustomization.yaml": {"resources": ["d.yaml"], "patches": [{"patch": patch}]}, "d.yaml": DEPLOY},
    )
    with pytest.raises(kustomize.KustomizeError, match="matched no resource"):
        kustomize.build(tmp_path / "b")
    _write(tmp_path / "c", {"kustomization.yaml": {"resources": ["d.yaml", "d.yaml"]}, "d.yaml": DEPLOY})
    with pytest.raises(kustomize.KustomizeError, match="duplicate"):
        kustomize.build(tmp_path / "c")


def test_image_repository_strips_tag_and_digest(kustomize: ModuleType) -> None:
    assert kustomize.image_repository("reg:5000/a/b:1.2@sha256:00") == "reg:5000/a/b"
    assert kustomize.image_repository("reg:5000/a/b") == "reg:5000/a/b"
    assert kustomize.image_repository("redis:7") == "redis"
