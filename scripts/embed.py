#!/usr/bin/env python3
"""Writes a C file that holds a text file as a NUL-terminated char array."""
import sys

src, out, symbol = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, 'rb').read()
with open(out, 'w') as f:
    f.write('#include <stddef.h>\n')
    f.write('extern const char %s[];\n' % symbol)
    f.write('extern const size_t %s_length;\n' % symbol)
    f.write('const char %s[] = {\n' % symbol)
    for i in range(0, len(data), 16):
        f.write('  ' + ', '.join('%d' % b for b in data[i:i + 16]) + ',\n')
    f.write('  0\n};\n')
    f.write('const size_t %s_length = %d;\n' % (symbol, len(data)))
