"""Loki's configuration reference (docs/sources/shared/configuration.md of a release) to what
the atlas Loki stand-in checks against (tests/standin/src/loki.rs):

    python3 loki-config-keys.py configuration.md keys > tests/standin/data/loki-keys.txt
    python3 loki-config-keys.py configuration.md flags > tests/standin/data/loki-flags.txt

keys: one `path<TAB>type` line per config key (`[]` a list element, `*` any map key);
flags: one CLI flag per line (`<prefix>` where a block is used under several prefixes)."""
import re, sys
text = open(sys.argv[1]).read()
mode = sys.argv[2]
sections = {}
root_src = None
for m in re.finditer(r'^### (.+?)\n(.*?)(?=^### |\Z)', text, re.M | re.S):
    name = m.group(1).strip()
    blocks = re.findall(r'^```yaml\n(.*?)^```', m.group(2), re.M | re.S)
    if not blocks:
        continue
    body = max(blocks, key=lambda b: b.count('\n['))
    if name.startswith('Supported contents'):
        root_src = body
    else:
        sections[name] = body
LEAF = re.compile(r'^(\s*)\[([A-Za-z0-9_]+): (.*)\]\s*$')
MAP = re.compile(r'^(\s*)([A-Za-z0-9_]+):\s*$')
WILD = re.compile(r'^(\s*)\[(<|:)')
def parse(src):
    root = {}
    stack = [(-1, root)]
    for line in src.split('\n'):
        if not line.strip() or line.strip().startswith('#'):
            continue
        m = LEAF.match(line) or MAP.match(line)
        w = WILD.match(line)
        indent = len(line) - len(line.lstrip())
        while stack[-1][0] >= indent:
            stack.pop()
        node = stack[-1][1]
        if w:
            inner = re.match(r'^\s*\[<(\w+)>\]\s*$', line)
            if inner:
                node.setdefault('<embed>', []).append(inner.group(1))
            else:
                node['*'] = 'any'
            continue
        if m is None:
            raise SystemExit('unparsed: ' + line)
        if m.re is LEAF:
            node[m.group(2)] = m.group(3).split(' | default')[0].strip()
        else:
            child = {}
            node[m.group(2)] = child
            stack.append((indent, child))
    return root
trees = {k: parse(v) for k, v in sections.items()}
root = parse(root_src)
out = []
def typ(t):
    t = t.strip('<>')
    return t
SCALARS = {'string', 'int', 'duration', 'boolean', 'float', 'url', 'time', 'daytime'}
def expand(node):
    """A node with its embedded blocks (`[<tls_config>]`) laid in."""
    out = {k: v for k, v in node.items() if k != '<embed>'}
    for b in node.get('<embed>', []):
        out.update(expand(trees[b]))
    return out
def emit(prefix, node, seen):
    for k, v in sorted(expand(node).items()):
        path = prefix + k if k != '*' else prefix + '*'
        if isinstance(v, dict):
            out.append((path, 'map'))
            emit(path + '.', v, seen)
            continue
        t = typ(v)
        if v == 'any':
            out.append((path, 'any')); continue
        m = re.match(r'list of (\w+?)s$', t)
        if t in trees:
            out.append((path, 'map'))
            if t not in seen:
                emit(path + '.', trees[t], seen | {t})
            else:
                out[-1] = (path, 'anymap')
        elif m and m.group(1) in trees:
            out.append((path, 'list'))
            emit(path + '[].', trees[m.group(1)], seen | {m.group(1)})
        elif t.startswith('map of string to ') and t[len('map of string to '):] in trees:
            b = t[len('map of string to '):]
            out.append((path, 'map'))
            emit(path + '.*.', trees[b], seen | {b})
        elif t.startswith('map of'):
            out.append((path, 'anymap'))
        elif t.startswith('list of'):
            out.append((path, 'list'))
        else:
            base = re.match(r'\w+', t).group(0)
            out.append((path, base if base in SCALARS else 'any'))
if mode == 'flags':
    flags = sorted(set(re.findall(r'^\s*# CLI flag: (-\S+)', text, re.M)))
    print('\n'.join(flags))
else:
    emit('', root, frozenset())
    for p, t in out:
        print(f'{p}\t{t}')
