#!/usr/bin/python3
"""Checks docker/k8s: YAML syntax (yamllint), every object against the Kubernetes API schema
(the models of Debian's python3-kubernetes: unknown fields, wrong types, missing required
fields), and that the objects agree with each other and with edgesplit-server (selectors,
ports, probes on /healthz and /readyz, CPU requests for the autoscaler, CURVE on by default
with the server's key from the Secret that kustomization.yaml generates).

  validate_k8s.py DIR          check the manifests in DIR; exit 0 when they pass, 1 otherwise
  validate_k8s.py --self-test DIR
                               check that broken copies of DIR's manifests are rejected
Exit 77 (ctest's skip) when python3-yaml or python3-kubernetes is missing.
"""
import copy
import pathlib
import re
import sys

try:
    import yaml
    import kubernetes.client as k8s
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"SKIP: {e}; install python3-yaml and python3-kubernetes (Debian)")
    sys.exit(77)

# python3-kubernetes 22.6 (Debian 12) predates autoscaling/v2's models; autoscaling/v2 is
# autoscaling/v2beta2 promoted unchanged (Kubernetes 1.23), so its schema checks v2 objects.
MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def check_schema(value, type_name, path, errors):
    """Walks value against the python3-kubernetes type name, appending schema violations."""
    if value is None:
        return
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check_schema(item, m.group(1), f"{path}[{i}]", errors)
        return
    m = re.fullmatch(r"dict\((\w+), (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for k, v in value.items():
            check_schema(v, m.group(2), f"{path}.{k}", errors)
        return
    if type_name == "object":  # IntOrString and free-form fields
        if not isinstance(value, (str, int, dict, list)):
            errors.append(f"{path}: unexpected {type(value).__name__}")
        return
    if type_name in PRIMITIVES:
        expected = PRIMITIVES[type_name]
        if isinstance(value, bool) and type_name != "bool":
            errors.append(f"{path}: expected {type_name}, got bool")
        elif not isinstance(value, expected):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name == "datetime":
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {type_name} object, got {type(value).__name__}")
        return
    json_to_attr = {j: a for a, j in model.attribute_map.items()}
    for key, sub in value.items():
        if key not in json_to_attr:
            errors.append(f"{path}: unknown field '{key}' in {type_name}")
            continue
        check_schema(sub, model.openapi_types[json_to_attr[key]], f"{path}.{key}", errors)


def check_required(doc, model_name, where, errors):
    """Builds the client model, whose constructors reject missing required fields and bad enums."""
    try:
        k8s.ApiClient()._ApiClient__deserialize(doc, model_name)
    except (ValueError, TypeError) as e:
        errors.append(f"{where}: {e}")


def selector_matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# Where the server image's entrypoint (docker/server-entrypoint.sh) looks for the CURVE key.
DEFAULT_CURVE_SECRET = "/run/secrets/edgesplit/server.key"


def check_curve(pod_spec, server, generated_secrets, errors):
    """The server runs with CURVE: EDGESPLIT_PLAINTEXT is not set to 1, and its secret key file
    (--curve-secret, else EDGESPLIT_CURVE_SECRET, else the entrypoint's default) comes from a
    Secret volume that holds it, a Secret that kustomization.yaml generates."""
    env = {e["name"]: e.get("value") for e in server.get("env", []) if "name" in e}
    if str(env.get("EDGESPLIT_PLAINTEXT", "0")).lower() in ("1", "true", "yes"):
        errors.append("Deployment: EDGESPLIT_PLAINTEXT turns CURVE off; the manifests must deploy "
                      "CURVE by default")
        return
    args = server.get("args", [])
    key_path = env.get("EDGESPLIT_CURVE_SECRET") or DEFAULT_CURVE_SECRET
    if "--curve-secret" in args and args.index("--curve-secret") + 1 < len(args):
        key_path = args[args.index("--curve-secret") + 1]
    directory, _, name = key_path.rpartition("/")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mount = next((m for m in server.get("volumeMounts", [])
                  if m.get("mountPath", "").rstrip("/") == directory), None)
    if mount is None:
        errors.append(f"Deployment: nothing is mounted at {directory}, where the server's CURVE "
                      f"key {key_path} is read")
        return
    secret = volumes.get(mount["name"], {}).get("secret")
    if not secret:
        errors.append(f"Deployment: the CURVE key at {directory} does not come from a Secret")
        return
    if secret.get("optional"):
        errors.append("Deployment: the CURVE key's Secret is optional; the server would not start")
    items = secret.get("items")
    if items is not None and name not in {i.get("path") for i in items}:
        errors.append(f"Deployment: the Secret volume at {directory} has no {name}")
    if generated_secrets is not None:
        generated = generated_secrets.get(secret.get("secretName"))
        if generated is None:
            errors.append(f"Deployment: Secret {secret.get('secretName')} is not generated by "
                          "kustomization.yaml")
        elif items is not None:
            keys = {f.split("=", 1)[0] if "=" in f else f.rsplit("/", 1)[-1] for f in generated}
            for i in items:
                if i.get("key") not in keys:
                    errors.append(f"Deployment: Secret {secret.get('secretName')} has no key "
                                  f"{i.get('key')} in kustomization.yaml")


def check_consistency(objects, errors, generated_secrets=None):
    """Cross-object checks: the pieces select each other and match edgesplit-server's flags."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        if kind not in by_kind:
            errors.append(f"no {kind} in the manifests")
    if errors:
        return
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    if not selector_matches(dep["spec"]["selector"].get("matchLabels"), pod_labels):
        errors.append("Deployment: spec.selector does not match the pod template's labels")
    containers = pod["spec"]["containers"]
    server = containers[0]
    args = server.get("args", [])
    port_names = {p.get("name"): p["containerPort"] for c in containers for p in c.get("ports", [])}

    def flag(name):
        return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None

    http_port = flag("--http-port")
    if http_port is None:
        errors.append("Deployment: the server's args lack --http-port (probes need it)")
    bind = flag("--bind") or ""
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        p = server.get(probe)
        if not p or "httpGet" not in p:
            errors.append(f"Deployment: {probe} must be an httpGet probe on {path}")
            continue
        if p["httpGet"].get("path") != path:
            errors.append(f"Deployment: {probe} checks {p['httpGet'].get('path')}, not {path}")
        port = p["httpGet"].get("port")
        port = port_names.get(port, port)
        if http_port is not None and str(port) != str(http_port):
            errors.append(f"Deployment: {probe} port {port} is not --http-port {http_port}")
    zmq_port = port_names.get("zmq")
    if zmq_port is None or not bind.endswith(f":{zmq_port}"):
        errors.append(f"Deployment: port 'zmq' ({zmq_port}) is not the --bind port ({bind})")
    if not server.get("resources", {}).get("requests", {}).get("cpu"):
        errors.append("Deployment: no CPU request; the autoscaler's utilization needs one")
    check_curve(pod["spec"], server, generated_secrets, errors)
    for svc in by_kind["Service"]:
        if not selector_matches(svc["spec"].get("selector"), pod_labels):
            errors.append(f"Service {svc['metadata']['name']}: selector matches no pod")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in port_names:
                errors.append(f"Service: targetPort '{tp}' is no container port name")
            if isinstance(tp, int) and tp not in port_names.values():
                errors.append(f"Service: targetPort {tp} is no container port")
    for hpa in by_kind["HorizontalPodAutoscaler"]:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]:
            errors.append("HorizontalPodAutoscaler: scaleTargetRef is not the Deployment")
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        if not 1 <= lo <= hi:
            errors.append(f"HorizontalPodAutoscaler: minReplicas {lo} / maxReplicas {hi}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selector_matches(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
            errors.append("PodDisruptionBudget: selector matches no pod")


def lint(path, text, errors):
    """yamllint (Debian's yamllint) with its relaxed rules plus a line-length limit."""
    try:
        from yamllint import config, linter
    except ImportError:
        print("note: yamllint not installed; YAML style not checked")
        return
    conf = config.YamlLintConfig("extends: relaxed\nrules:\n  line-length: {max: 120}\n")
    for problem in linter.run(text, conf):
        if problem.level == "error":
            errors.append(f"{path.name}:{problem.line}:{problem.column}: {problem.desc}")


def load(directory):
    """{path: text} of the *.yaml files in a manifest folder."""
    texts = {p: p.read_text() for p in sorted(pathlib.Path(directory).glob("*.yaml"))}
    return texts


def validate(texts):
    errors = []
    objects = []
    resources = None
    generated_secrets = None  # name -> files, from kustomization.yaml's secretGenerator
    for path, text in texts.items():
        lint(path, text, errors)
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            errors.append(f"{path.name}: {e}")
            continue
        for i, doc in enumerate(docs):
            where = f"{path.name}[{i}]"
            if not isinstance(doc, dict):
                errors.append(f"{where}: not a mapping")
                continue
            if doc.get("kind") == "Kustomization":
                resources = doc.get("resources", [])
                generated_secrets = {g.get("name"): g.get("files", [])
                                     for g in doc.get("secretGenerator", [])}
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in MODELS:
                errors.append(f"{where}: unexpected apiVersion/kind {key}")
                continue
            before = len(errors)
            check_schema(doc, MODELS[key], f"{where}:{doc['kind']}", errors)
            check_required(doc, MODELS[key], where, errors)
            if len(errors) == before:
                objects.append(doc)
    names = {p.name for p in texts}
    if resources is not None:
        for r in resources:
            if r not in names:
                errors.append(f"kustomization.yaml: resource {r} does not exist")
        for n in names - set(resources) - {"kustomization.yaml"}:
            errors.append(f"kustomization.yaml: {n} is not listed in resources")
    if not errors:
        check_consistency(objects, errors, generated_secrets)
    return errors, objects


def self_test(texts):
    """Each broken variant of the manifests must be rejected, and the originals accepted."""
    def mutated(file, change):
        out = dict(texts)
        path = next(p for p in texts if p.name == file)
        doc = yaml.safe_load(texts[path])
        change(doc)
        out[path] = yaml.safe_dump(doc, sort_keys=False)
        return out

    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    cases = {
        "unknown field": ("deployment.yaml", lambda d: container(d).update(imagePullPolice="Always")),
        "wrong type": ("deployment.yaml", lambda d: d["spec"].update(replicas="two")),
        "missing required field": ("service.yaml", lambda d: d["spec"]["ports"][0].pop("port")),
        "selector mismatch": ("service.yaml", lambda d: d["spec"].update(selector={"app": "nope"})),
        "probe path": ("deployment.yaml",
                       lambda d: container(d)["livenessProbe"]["httpGet"].update(path="/")),
        "no cpu request": ("deployment.yaml", lambda d: container(d)["resources"].pop("requests")),
        "hpa target": ("hpa.yaml", lambda d: d["spec"]["scaleTargetRef"].update(name="other")),
        "plaintext": ("deployment.yaml", lambda d: container(d)["env"].append(
            {"name": "EDGESPLIT_PLAINTEXT", "value": "1"})),
        "no curve key volume": ("deployment.yaml", lambda d: container(d).update(
            volumeMounts=[m for m in container(d)["volumeMounts"] if m["name"] != "curve-key"])),
        "curve key secret not generated": ("kustomization.yaml",
                                           lambda d: d.pop("secretGenerator")),
        "bad hpa metric": ("hpa.yaml",
                           lambda d: d["spec"]["metrics"][0]["resource"]["target"].update(
                               averageUtilisation=70)),
    }
    failures = []
    errors, _ = validate(texts)
    if errors:
        failures.append("the unmodified manifests are rejected: " + "; ".join(errors))
    for name, (file, change) in cases.items():
        errors, _ = validate(mutated(file, change))
        print(f"{name}: {'rejected: ' + errors[0] if errors else 'ACCEPTED'}")
        if not errors:
            failures.append(f"{name} was accepted")
    syntax = dict(texts)
    path = next(iter(syntax))
    syntax[path] = syntax[path] + "\n  bad: [indent\n"
    errors, _ = validate(syntax)
    print(f"yaml syntax: {'rejected: ' + errors[0] if errors else 'ACCEPTED'}")
    if not errors:
        failures.append("a YAML syntax error was accepted")
    return failures


def main(argv):
    if len(argv) == 3 and argv[1] == "--self-test":
        failures = self_test(load(argv[2]))
        for f in failures:
            print(f"FAIL: {f}")
        return 1 if failures else 0
    if len(argv) != 2:
        print(__doc__)
        return 2
    texts = load(argv[1])
    if not texts:
        print(f"no *.yaml in {argv[1]}")
        return 1
    errors, objects = validate(texts)
    for e in errors:
        print(f"error: {e}")
    if not errors:
        print(f"ok: {len(objects)} objects in {len(texts)} files: " +
              ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
