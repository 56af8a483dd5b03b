"""Infrastructure every stage uses: errors, atomic I/O, typed configs and their schema,
logging, devices, class names.
"""
