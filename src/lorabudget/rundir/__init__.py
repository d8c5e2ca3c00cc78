"""The run directory: the one owner of its file names and record layouts (``layout``), of its trained
weights (``weights``) and of its lifecycle (``lifecycle``: lock, fresh runs, ``--overwrite``). Every other
module reads and writes a run through here."""
