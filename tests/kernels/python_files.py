"""Prints the files this interpreter needs to run the given scripts' imports: the interpreter,
every imported module's source and bytecode, the extension modules. The kernel tier copies them
into the benchmark's guest image at the same paths (the interpreter finds its prefix from them)."""
import ast
import os
import sys
import sysconfig

for script in sys.argv[1:]:
    for node in ast.walk(ast.parse(open(script).read())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                __import__(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            __import__(node.module)

# Imported at run time, not at start: host names go through the idna codec.
for lazy in ("encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_8"):
    __import__(lazy)

files = {os.path.realpath(sys.executable)}
for module in list(sys.modules.values()):
    for attr in ("__file__", "__cached__"):
        path = getattr(module, attr, None)
        if path and os.path.exists(path):
            files.add(os.path.realpath(path))
# The landmarks the interpreter looks for to find its prefix and extension directory.
stdlib = sysconfig.get_path("stdlib")
files.add(os.path.join(stdlib, "os.py"))
dynload = os.path.join(stdlib, "lib-dynload")
if os.path.isdir(dynload):
    files.add(os.path.realpath(dynload))
print("\n".join(sorted(files)))
