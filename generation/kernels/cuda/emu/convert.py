#!/usr/bin/env python3
"""generation/kernels/cuda/emu/convert.py — the CUDA backend's .cu files as C++ for the
emulation (include/emu.h): kernel<<<grid, block, smem, stream>>>(args) becomes a call of
emu::launch with the arguments evaluated at the launch (as CUDA takes them), and
`extern __shared__ T name[];` points at the launch's dynamic shared memory.

usage: convert.py SRC_DIR OUT_DIR"""
import os
import re
import sys

LAUNCH = re.compile(r'([A-Za-z_]\w*(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);', re.S)
DYN_SMEM = re.compile(r'extern __shared__ (\w+) (\w+)\[\];')


def convert(text):
    n_launch = text.count('<<<')
    text = DYN_SMEM.sub(r'\1 *\2 = (\1 *)emu_dyn_smem();', text)
    text, n = LAUNCH.subn(
        lambda m: 'emu::launch(%s, [_a = std::make_tuple(%s)] '
                  '{ std::apply([](auto &&...v) { %s(v...); }, _a); });'
                  % (m.group(2), m.group(3), m.group(1)), text)
    if n != n_launch:
        sys.exit('convert.py: %d of %d launches understood' % (n, n_launch))
    return text


def main():
    src, out = sys.argv[1], sys.argv[2]
    for f in sorted(os.listdir(src)):
        if f.endswith('.cu'):
            with open(os.path.join(src, f)) as fh:
                text = convert(fh.read())
            with open(os.path.join(out, f[:-3] + '.cpp'), 'w') as fh:
                fh.write(text)


if __name__ == '__main__':
    main()
