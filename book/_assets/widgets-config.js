// Loaded before RequireJS and the Jupyter widgets HTML manager (myst-nb's nb_ipywidgets_js in
// _config.yml; book/_ext/offline_assets.py keeps the order).
(function () {
  var assets = new URL("offline/html-manager/", document.currentScript.src).href;

  // The manager's stylesheets name their fonts relative to the AMD module that injects them,
  // "@jupyter-widgets/html-manager/dist/libembed-amd": RequireJS would resolve it against the
  // page's folder (404s). A global `require` object before require.js loads is its configuration.
  // Scripts of the manager itself fetch from __jupyter_widgets_assets_path__ (or a CDN).
  window.__jupyter_widgets_assets_path__ = assets;
  window.require = { paths: { "@jupyter-widgets/html-manager/dist": assets.replace(/\/$/, "") } };

  // The widgets typeset LaTeX in labels with the MathJax 2 call MathJax.Hub.Queue(["Typeset", ...]);
  // the book loads MathJax 3, which has no Hub. Translate the call once MathJax 3 is loaded
  // (deferred, so before DOMContentLoaded; the manager renders later, on window load).
  document.addEventListener("DOMContentLoaded", function () {
    var mathjax = window.MathJax;
    if (!mathjax || !mathjax.version || mathjax.Hub) {
      return;
    }
    mathjax.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (job) {
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
            mathjax.startup.promise = mathjax.startup.promise.then(function () {
              return mathjax.typesetPromise([job[2]]);
            });
          }
        });
      },
    };
  });
})();
