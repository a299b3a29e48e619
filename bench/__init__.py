"""sidegate's benchmarks and model-quality evaluations.

Each part is a module ``bench/<part>.py`` with a ``main()``; ``python -m bench <part>`` runs one,
``python -m bench`` runs them all, ``python -m bench --list`` lists them. Every part prints a
table and writes ``bench/results/<part>.json`` (with the machine's load average, CPU count, date,
git commit and the command) through the helpers in :mod:`bench._harness`.
"""
