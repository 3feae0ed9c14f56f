"""BGMv2 in the browser (docs/web.md).

* :func:`bgm_deploy.web.site.export_web` writes a static site: the page, the JavaScript
  module ``bgm.js``, the web-ready model and onnxruntime-web at a pinned version;
* :func:`bgm_deploy.web.server.serve_web` serves it on loopback with the cross-origin
  isolation that WASM threads need.

Import the submodules directly: ``site`` loads torch (it exports the model), ``server``
and ``layout`` do not.
"""
