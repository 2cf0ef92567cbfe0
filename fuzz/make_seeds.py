#!/usr/bin/env python3
"""Write the seed corpora under fuzz/corpus/<target>/ (small, committed).

Run from anywhere: python3 fuzz/make_seeds.py. Deterministic output.
"""
import gzip
import io
import json
import os
import re
import struct
import tarfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- static_pod: first byte even = YAML, odd = JSON -----------------------
ETCD = """apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
  labels: {component: etcd, tier: control-plane}
  annotations: {note: seed}
spec:
  hostNetwork: true
  priorityClassName: system-node-critical
  securityContext: {runAsUser: 0, fsGroup: 2000, seccompProfile: {type: RuntimeDefault}}
  initContainers:
  - name: init
    image: registry.local/busybox:1.36
    command: [sh, -c, "echo $(POD_NAME) $$HOME"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
  containers:
  - name: etcd
    image: registry.local/etcd:3.4
    command: [etcd, --data-dir=/var/lib/etcd, --name=$(NODE)]
    env:
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: LBL, valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    ports: [{containerPort: 2379, hostPort: 2379, protocol: TCP}]
    resources:
      requests: {cpu: 100m, memory: 100Mi}
      limits: {cpu: "2", memory: 1Gi}
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}
    volumeMounts:
    - {name: data, mountPath: /var/lib/etcd}
    - {name: scratch, mountPath: /scratch, subPath: a/b}
    - {name: info, mountPath: /etc/podinfo, readOnly: true}
  volumes:
  - name: data
    hostPath: {path: /var/lib/etcd, type: DirectoryOrCreate}
  - name: scratch
    emptyDir: {}
  - name: info
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
  hostAliases: [{ip: 10.1.2.3, hostnames: [foo.local, bar.local]}]
  dnsPolicy: ClusterFirst
  restartPolicy: Always
"""
write("static_pod", "etcd.yaml", b"\x00" + ETCD.encode())
write("static_pod", "minimal.yaml", b"\x00apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: web, image: nginx}]\n")
pod_json = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "nginx:1.25",
                "args": ["--port=$(PORT)"],
                "env": [{"name": "PORT", "value": "8080"}],
                "ports": [{"containerPort": 8080, "hostPort": 8080}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
            }
        ],
        "subdomain": "svc",
        "terminationGracePeriodSeconds": 5,
    },
}
write("static_pod", "web.json", b"\x01" + json.dumps(pod_json).encode())

# --- image_manifest --------------------------------------------------------
H = "sha256:" + "a" * 64
H2 = "sha256:" + "b" * 64
H3 = "sha256:" + "c" * 64
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": H, "size": 581},
    "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": H2, "size": 2_000_000},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": H3, "size": 512},
    ],
    "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
}
config = {
    "created": "2024-01-01T00:00:00Z",
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "User": "1000:1000",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "WorkingDir": "/",
        "ExposedPorts": {"80/tcp": {}},
        "Volumes": {"/data": {}},
        "Labels": {"maintainer": "x"},
        "StopSignal": "SIGQUIT",
    },
    "rootfs": {"type": "layers", "diff_ids": [H3, H2]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /"}],
}
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": H, "size": 1000,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": H2, "size": 1000,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": H3, "size": 100,
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
         "platform": {"architecture": "unknown", "os": "unknown"}},
    ],
}
docker = dict(manifest)
docker["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
docker["config"] = dict(manifest["config"], mediaType="application/vnd.docker.container.image.v1+json")
write("image_manifest", "oci-manifest.json", json.dumps(manifest, indent=1))
write("image_manifest", "docker-manifest.json", json.dumps(docker))
write("image_manifest", "oci-index.json", json.dumps(index, indent=1))
write("image_manifest", "config.json", json.dumps(config))
write("image_manifest", "manifest+config", json.dumps(manifest).encode() + b"\xff" + json.dumps(config).encode())
write("image_manifest", "reference", "registry.local:5000/team/app:v1.2@sha256:" + "0123456789abcdef" * 4)
write("image_manifest", "challenge", 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')

# --- layer_unpack ----------------------------------------------------------
def tar_bytes(fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        def add(name, typ, data=b"", linkname="", mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size = typ, mode, 1700000000, len(data)
            ti.linkname = linkname
            ti.uid = ti.gid = 0
            t.addfile(ti, io.BytesIO(data) if data else None)
        add("etc/", tarfile.DIRTYPE, mode=0o755)
        add("etc/hostname", tarfile.REGTYPE, b"layer\n")
        add("bin/", tarfile.DIRTYPE, mode=0o755)
        add("bin/busybox", tarfile.REGTYPE, b"\x7fELF", mode=0o4755)
        add("bin/sh", tarfile.SYMTYPE, linkname="busybox")
        add("bin/ls", tarfile.LNKTYPE, linkname="bin/busybox")
        add("etc/.wh.old", tarfile.REGTYPE)
        add("var/.wh..wh..opq", tarfile.REGTYPE)
        add("dev/null", tarfile.CHRTYPE, mode=0o666)
    return buf.getvalue()

def escape_tar():
    """Entries aimed outside the scratch directory the target unpacks into
    ($TMPDIR/nodelet-fuzz-unpack/a/b/layer): all must be refused."""
    buf = io.BytesIO()
    top = "/tmp/nodelet-fuzz-unpack"
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        def add(name, typ, data=b"", linkname=""):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size, ti.linkname = typ, 0o644, 0, len(data), linkname
            t.addfile(ti, io.BytesIO(data) if data else None)
        add("abs", tarfile.SYMTYPE, linkname=top)
        add("abs/evil", tarfile.REGTYPE, b"x")
        add("up", tarfile.SYMTYPE, linkname="../../..")
        add("up/evil", tarfile.REGTYPE, b"x")
        add("hard", tarfile.LNKTYPE, linkname=top + "/a")
        add("../evil", tarfile.REGTYPE, b"x")
        add("/evil", tarfile.REGTYPE, b"x")
        add("d/../../evil", tarfile.DIRTYPE)
    return buf.getvalue()


write("layer_unpack", "escapes.tar", escape_tar())
plain = tar_bytes(tarfile.GNU_FORMAT)
write("layer_unpack", "plain.tar", plain)
write("layer_unpack", "pax.tar", tar_bytes(tarfile.PAX_FORMAT))
write("layer_unpack", "layer.tar.gz", gzip.compress(plain, compresslevel=9, mtime=0))

# --- cni_config ------------------------------------------------------------
bridge = {
    "cniVersion": "1.0.0",
    "name": "nodelet",
    "type": "nodelet-bridge",
    "bridge": "nodelet0",
    "isGateway": True,
    "ipMasq": True,
    "mtu": 1500,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
                                               [{"subnet": "fd00:88::/64"}]],
             "routes": [{"dst": "0.0.0.0/0"}]},
    "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
}
write("cni_config", "bridge.conf", json.dumps(bridge, indent=1))
conflist = {
    "cniVersion": "1.1.0",
    "name": "k8s-pod-network",
    "disableGC": False,
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ],
}
write("cni_config", "pods.conflist", json.dumps(conflist))
result = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "fd00:88::5/64", "interface": 0}, {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}
write("cni_config", "result.json", json.dumps(result))

# --- cri_log: 12 bytes of timestamp, then ops (see cri_log.rs) -------------
ts = struct.pack("<QI", 1_709_251_199, 5)
def op(stream_err, data):
    out = b""
    while True:
        n = min(len(data), 0x3f)
        out += bytes([(0x40 if stream_err else 0) | n]) + data[:n]
        data = data[n:]
        if not data:
            return out
script = op(False, b"hello\nwor") + op(True, b"error: x\n") + op(False, b"ld\n\n") + op(False, b"tail")
write("cri_log", "lines", ts + script)
# A long run (0x80: 0x3f*512+1 copies) makes partial records.
write("cri_log", "long", ts + bytes([0x80 | 0x3f, ord("x")]) + bytes([0x80 | 0x3f, ord("y")]) + op(False, b"\n") + bytes([0xC1, ord("z")]))

# --- spdy_ws ---------------------------------------------------------------
src = open(os.path.join(ROOT, "src/streaming/spdy.rs")).read()
lit = re.search(r'pub const DICTIONARY: &\[u8; 1423\] = b"\\\n(.*?)";', src, re.S).group(1)
lit = re.sub(r"\\\n\s*", "", lit).lstrip()
dictionary = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), lit.encode())
assert len(dictionary) == 1423, len(dictionary)

def header_block(headers):
    out = struct.pack(">I", len(headers))
    for k, v in headers:
        out += struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode()
    return out

deflate = zlib.compressobj(zdict=dictionary)
def control(typ, flags, payload):
    return struct.pack(">HHI", 0x8003, typ, (flags << 24) | len(payload)) + payload

def syn_stream(sid, headers, flags=0):
    block = deflate.compress(header_block(headers)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return control(1, flags, struct.pack(">IIBB", sid, 0, 0, 0) + block)

session = b""
session += control(4, 0, struct.pack(">I", 1) + struct.pack(">II", 7, 65536))  # SETTINGS
session += syn_stream(1, [("streamtype", "error")])
session += syn_stream(3, [("streamtype", "stdin")])
session += syn_stream(5, [("streamtype", "stdout")])
session += struct.pack(">II", 3, (1 << 24) | 3) + b"ls\n"  # DATA, FIN
session += control(6, 0, struct.pack(">I", 1))  # PING
session += control(9, 0, struct.pack(">II", 0, 65536))  # WINDOW_UPDATE
session += control(3, 0, struct.pack(">II", 5, 5))  # RST_STREAM CANCEL
session += control(7, 0, struct.pack(">II", 5, 0))  # GOAWAY
write("spdy_ws", "spdy-session", b"\x00" + session)
write("spdy_ws", "spdy-portforward", b"\x01" + syn_stream(1, [("streamtype", "data"), ("port", "80"), ("requestid", "0")]))
write("spdy_ws", "header-block", b"\x80" + header_block([("streamtype", "resize"), ("x-multi", "a\x00b")]))
write("spdy_ws", "ws-binary", b"\xc0\x00stdin data")
write("spdy_ws", "ws-close-v5", b"\xc2\xff\x00")
write("spdy_ws", "ws-base64-text", b"\xc5" + b"0aGVsbG8=")
write("spdy_ws", "ws-resize", b"\xc0\x04" + json.dumps({"Width": 80, "Height": 24}).encode())
