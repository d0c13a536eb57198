// Lookalike's dashboard: the little that plain forms cannot do. Every form also works without this script.
"use strict";

// Forms that change something for good ask first.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// Uploads: one request per picture, each with its own progress bar.
function uploadOne(form, file, row) {
  return new Promise((resolve) => {
    const data = new FormData();
    data.append("csrf_token", form.elements.csrf_token.value);
    data.append("meta", form.elements.meta.value);
    data.append("image", file, file.name);
    const request = new XMLHttpRequest();
    const bar = row.querySelector("progress");
    const status = row.querySelector(".status");
    request.upload.addEventListener("progress", (progress) => {
      if (progress.lengthComputable) {
        bar.value = progress.loaded / progress.total;
      }
    });
    request.addEventListener("load", () => {
      bar.value = 1;
      let reply = null;
      try {
        reply = JSON.parse(request.responseText);
      } catch (error) {
        reply = null;
      }
      if (request.status === 200 && reply && reply.results && reply.results.length === 1) {
        const result = reply.results[0];
        if (result.error) {
          status.textContent = "not added: " + result.error;
        } else if (result.duplicate) {
          status.textContent = "already listed as " + result.id;
        } else {
          status.textContent = "added as " + result.id;
        }
      } else {
        status.textContent = "failed: " + (reply && reply.error ? reply.error.message : "status " + request.status);
      }
      row.dataset.done = "true";
      resolve();
    });
    request.addEventListener("error", () => {
      status.textContent = "failed: the server could not be reached";
      row.dataset.done = "true";
      resolve();
    });
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    request.send(data);
  });
}

const uploadForm = document.getElementById("upload-form");
if (uploadForm) {
  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = Array.from(uploadForm.elements.image.files);
    const list = document.getElementById("upload-progress");
    const button = uploadForm.querySelector("button[type=submit]");
    list.replaceChildren();
    button.disabled = true;
    const rows = files.map((file) => {
      const row = document.createElement("li");
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.value = 0;
      bar.setAttribute("aria-label", "upload of " + file.name);
      const name = document.createElement("span");
      name.textContent = file.name + ": ";
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = "waiting";
      row.append(bar, name, status);
      list.append(row);
      return row;
    });
    for (let position = 0; position < files.length; position += 1) {
      rows[position].querySelector(".status").textContent = "sending";
      await uploadOne(uploadForm, files[position], rows[position]);
    }
    button.disabled = false;
    document.getElementById("upload-done").hidden = false;
  });
}
