#!/usr/bin/python3
"""Renders docker/k8s's Deployment for `podman kube play` (the container check's Kubernetes
part), changing only what podman 4.3 (Debian 12) cannot run as written, and saying so:

  - podman publishes every containerPort on the host (a missing hostPort defaults to the
    containerPort), so the replicas of one Deployment would all bind the same host ports: the
    Deployment becomes one per replica (NAME-0, NAME-1, ...; replicas: 1 each, the same pod
    template), each publishing its ports on free loopback ports;
  - a `secret` volume (podman 4.3's kube play crashes on one) becomes a hostPath folder holding
    the same items: the CURVE key Secret the kustomization generates from keys/server.key, and
    an optional Secret that is absent becomes an empty folder, as Kubernetes mounts it;
  - an httpGet probe on a named port gets the port's number (podman 4.3 turns a probe into a
    curl command with the port's number, and a name has none).

The Service, the HorizontalPodAutoscaler and the PodDisruptionBudget have no podman equivalent;
the image, the arguments, the environment, the security context and the probes' paths are kept
as they are.

  kube_play_manifest.py K8S_DIR KEY_DIR OUT_YAML OUT_JSON
      KEY_DIR holds server.key (edgesplit-keygen KEY_DIR/server); the folders for the secret
      volumes are made under KEY_DIR/volumes/. OUT_JSON lists the replicas: each one's pod and
      container names as podman makes them and its host ports by port name. Prints one line per
      change on stderr.
  kube_play_manifest.py --self-test K8S_DIR
      renders K8S_DIR into a scratch folder and checks the result: one Deployment of one replica
      per replica asked for, distinct loopback host ports, no secret volume left, the key in the
      folder the curve-key volume mounts, probes on port numbers, everything else unchanged.
Exit 77 (ctest's skip) when python3-yaml is missing.
"""
import copy
import json
import pathlib
import shutil
import socket
import sys

try:
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"skipped: {e}; install python3-yaml (Debian)")
    sys.exit(77)


def secret_files(k8s_dir):
    """Secret name -> {key: file under k8s_dir} from kustomization.yaml's secretGenerator."""
    kust = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    out = {}
    for gen in kust.get("secretGenerator", []):
        files = {}
        for entry in gen.get("files", []):
            key, _, path = entry.partition("=")
            files[key] = path or key
        out[gen["name"]] = files
    return out


def render(k8s_dir, key_dir):
    deployment = yaml.safe_load((k8s_dir / "deployment.yaml").read_text())
    generated = secret_files(k8s_dir)
    pod = deployment["spec"]["template"]["spec"]
    changes = []
    volumes_dir = key_dir / "volumes"
    for volume in pod.get("volumes", []):
        secret = volume.get("secret")
        if secret is None:
            continue
        name = secret["secretName"]
        folder = volumes_dir / volume["name"]
        folder.mkdir(parents=True, exist_ok=True)
        if name in generated:
            # The generator's files live under docker/k8s/keys/; the check's keys are in key_dir.
            items = secret.get("items") or [{"key": k, "path": k} for k in generated[name]]
            for item in items:
                source = key_dir / pathlib.Path(generated[name][item["key"]]).name
                target = folder / item["path"]
                shutil.copyfile(source, target)
                target.chmod(0o444)  # readable by the server's uid, as defaultMode + fsGroup give
            what = f"the files of Secret {name}"
        elif secret.get("optional"):
            what = f"nothing (optional Secret {name} is absent)"
        else:
            raise SystemExit(f"kube_play_manifest.py: Secret {name} is neither generated nor "
                             "optional")
        del volume["secret"]
        volume["hostPath"] = {"path": str(folder), "type": "Directory"}
        changes.append(f"volume {volume['name']}: secret {name} -> hostPath {folder} "
                       f"holding {what}")
    for container in pod["containers"]:
        names = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = (container.get(probe) or {}).get("httpGet")
            if get and isinstance(get.get("port"), str) and get["port"] in names:
                changes.append(f"{container['name']}.{probe}: port {get['port']} -> "
                               f"{names[get['port']]}")
                get["port"] = names[get["port"]]
    return deployment, changes


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_replicas(deployment):
    """One Deployment per replica, each publishing its ports on free loopback ports; the
    replicas' names, pods, containers and host ports."""
    name = deployment["metadata"]["name"]
    replicas = deployment["spec"].get("replicas", 1)
    docs, listed = [], []
    for r in range(replicas):
        d = copy.deepcopy(deployment)
        d["metadata"]["name"] = f"{name}-{r}"
        d["spec"]["replicas"] = 1
        pod = f"{name}-{r}-pod-0"  # podman names a Deployment's pod NAME-pod-0
        entry = {"deployment": d["metadata"]["name"], "pod": pod, "containers": {}, "ports": {}}
        for container in d["spec"]["template"]["spec"]["containers"]:
            entry["containers"][container["name"]] = f"{pod}-{container['name']}"
            for port in container.get("ports", []):
                port["hostIP"] = "127.0.0.1"
                port["hostPort"] = free_port()
                entry["ports"][port.get("name", str(port["containerPort"]))] = port["hostPort"]
        docs.append(d)
        listed.append(entry)
    return docs, listed


def self_test(k8s_dir):
    """Renders k8s_dir with a fake key and checks the result; the problems found."""
    import tempfile
    problems = []
    original = yaml.safe_load((k8s_dir / "deployment.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        key_dir = pathlib.Path(tmp)
        (key_dir / "server.key").write_text("not a key\n")
        deployment, _ = render(k8s_dir, key_dir)
        docs, replicas = split_replicas(deployment)
        if len(docs) != original["spec"]["replicas"] or len(docs) < 2:
            problems.append(f"{len(docs)} Deployments for {original['spec']['replicas']} replicas")
        ports = [p for r in replicas for p in r["ports"].values()]
        if len(set(ports)) != len(ports):
            problems.append(f"host ports not distinct: {ports}")
        for d in docs:
            spec = d["spec"]["template"]["spec"]
            if d["spec"]["replicas"] != 1:
                problems.append(f"{d['metadata']['name']}: replicas {d['spec']['replicas']}")
            for v in spec.get("volumes", []):
                if "secret" in v:
                    problems.append(f"{d['metadata']['name']}: secret volume {v['name']} left")
                if v["name"] == "curve-key":
                    key = pathlib.Path(v["hostPath"]["path"]) / "server.key"
                    if not key.is_file() or key.read_text() != "not a key\n":
                        problems.append(f"{key}: not the server's key")
            for c in spec["containers"]:
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    get = (c.get(probe) or {}).get("httpGet")
                    if get and not isinstance(get["port"], int):
                        problems.append(f"{c['name']}.{probe}: port {get['port']!r}")
                for p in c.get("ports", []):
                    if p.get("hostIP") != "127.0.0.1" or not p.get("hostPort"):
                        problems.append(f"{c['name']}: port {p} not published on loopback")
            # Everything else is the original template: image, args, env, security context.
            want = original["spec"]["template"]["spec"]["containers"][0]
            got = spec["containers"][0]
            for field in ("image", "args", "env", "securityContext", "resources", "volumeMounts"):
                if got.get(field) != want.get(field):
                    problems.append(f"{d['metadata']['name']}: {field} changed")
            if spec.get("securityContext") != original["spec"]["template"]["spec"].get(
                    "securityContext"):
                problems.append(f"{d['metadata']['name']}: the pod's securityContext changed")
    return problems


def main(argv):
    if len(argv) == 3 and argv[1] == "--self-test":
        problems = self_test(pathlib.Path(argv[2]))
        for p in problems:
            print(f"kube_play_manifest.py --self-test: {p}", file=sys.stderr)
        print(f"kube_play_manifest.py --self-test: {'FAILED' if problems else 'ok'}")
        return 1 if problems else 0
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    k8s_dir, key_dir = pathlib.Path(argv[1]), pathlib.Path(argv[2])
    out_yaml, out_json = pathlib.Path(argv[3]), pathlib.Path(argv[4])
    deployment, changes = render(k8s_dir, key_dir)
    docs, replicas = split_replicas(deployment)
    changes.append(f"Deployment {deployment['metadata']['name']} ({len(docs)} replicas) -> "
                   + ", ".join(f"{r['deployment']} on 127.0.0.1 ports {r['ports']}"
                               for r in replicas))
    out_yaml.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    out_json.write_text(json.dumps({"replicas": replicas}, indent=2) + "\n")
    for c in changes:
        print(f"kube_play_manifest.py: {c}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
