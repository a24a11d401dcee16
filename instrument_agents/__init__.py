"""coorch.instrument_agents: instrument protocol, twins and replay (DESIGN.md, "Layers").

Modules, one job each (imported explicitly, so that importing the protocol stays cheap):

* ``protocol``  -- the ``Driver`` Protocol, the optional ``Resettable`` capability and the
  ``DriverError`` family (``Aborted``, ``ResponseLost``);
* ``server``    -- ``create_app(driver, tokens=..)``: auth, lease, limits, exactly-once measure;
* ``lease``     -- the controller lease: one holder, named by an unguessable lease id;
* ``tokens``    -- named control tokens (per campaign or person) and their files;
* ``guards``    -- what the server remembers: results by request id; its error type;
* ``client``    -- ``InstrumentClient`` (httpx, retries with the same request id, holds the
  lease) and errors;
* ``launch``    -- ``serve_driver`` / ``start_twin``: uvicorn on loopback in a thread;
* ``frames``    -- ``AffineFrame`` library <-> stage from >= 3 fiducials;
* ``libraries`` -- virtual libraries with ground truth (``get_library("smbfo" | "smbfo-lgd" |
  "alscbn")``; smbfo-lgd's PFM loops come from the LGD simulator, ``coorch.lgd``);
* ``twin_base``, ``twins`` -- ``make_twin("afm" | "raman" | "wds" | "stem", library)``;
* ``faults``    -- seeded fault injection for the twins;
* ``replay``    -- ``ReplayDriver`` over a pre-acquired xarray dataset;
* ``cli``       -- ``agent_app`` (``coorch agent serve``).

This layer never imports models, storage, flows, tasks, torch or prefect.
"""
