"""The UniMed MONAI Label app: ``monailabel start_server --app apps/unimed --studies DIR``."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.async_tasks.utils import tasks as background_tasks

from lib.activelearning.retrain import AutoRetrain, labels_since, training_active
from lib.activelearning.scoring import model_tag, stored_score
from lib.configs.unimed import UniMedTaskConfig
from lib.endpoints.train_route import register_train_route
from lib.infers.image_access import PrivateUploads, ServerPathPolicy
from lib.infers.interactive import ClicksUnsupportedError
from lib.infers.unimed import InferRequestError, UniMedInferTask
from lib.log_redaction import install_log_redaction
from lib.safe_text import scrub_paths
from trainers.train_request import TrainRequest
from unimed import __version__
from unimed.dicom.seg import SegError
from unimed.dicom.series import DicomSeriesError
from unimed.labels import LabelRegistry, UnknownLabelError
from unimed.large_images import VoxelLimitError
from unimed.tasks import UnknownTaskError
from unimed.transforms import IMAGE_SUFFIXES, ImageLoadError
from unimed.writers import OutputError

logger = logging.getLogger(__name__)


class UniMedApp(MONAILabelApp):
    """One universal network for segmentation, detection and classification.

    Bad requests get a 4xx whose message names the problem: an unknown model or image id
    (404), an unknown task or label or malformed params, clicks among them (400), clicks sent to
    a checkpoint not trained for them (409), an image that cannot be read (422), an image above
    conf ``max_voxels`` (413, before its pixels are read). Inference runs
    off the event loop, conf ``max_concurrent_infers`` (default 1) at a time, so ``/info``
    answers while images are inferred.

    Active learning: strategies ``random``, ``first``, ``uncertainty``, ``uncertainty_sampled``
    and ``diversity``; the scoring method ``unimed_uncertainty`` runs in the background. Saving
    a final label starts a short fine-tuning run once ``auto_train_labels`` new labels have
    arrived (conf keys: see :class:`~lib.activelearning.retrain.AutoRetrain`).

    New structures from the viewer: a saved label's segments (``label_info``) are checked
    against the served checkpoint's labels at save (4xx naming why); a segment with a new name
    is kept as a pending label, which the next training run teaches (``main.py teach``'s code)
    and ``/info`` lists (``unimed.labels``, ``unimed.pending_labels``; see
    :mod:`lib.datastore.segments`).

    With ``--studies http(s)://.../dicom-web`` the datastore is a PACS: every series of the
    modalities in conf ``dicomweb_modalities`` (default ``CT,MR``) is an image, and a final
    label goes back to the PACS as a DICOM SEG (see :mod:`lib.datastore.dicomweb`).

    On a network (README "On a network"): with MONAI Label's auth settings, tokens are verified
    and roles checked (:mod:`lib.endpoints.auth_route`); a model upload must load before it is
    served and a delete never leaves untrained weights (:mod:`lib.endpoints.model_route`); web
    pages of other origins may call the server only when listed in conf ``cors_origins``
    (comma-separated, :mod:`lib.endpoints.cors`); the log holds no patient identifiers
    (:mod:`lib.log_redaction`).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        install_log_redaction()
        self.model_dir = os.path.join(app_dir, "model")
        self.task_config = UniMedTaskConfig()
        self.task_config.init("unimed", self.model_dir, conf, None)
        self.auto_retrain = AutoRetrain.from_conf(conf)
        self.infer_uploads = PrivateUploads(app_dir)
        self.server_paths = ServerPathPolicy.from_conf(conf.get("infer_path_roots", ""))
        self._retrain_lock = threading.Lock()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="UniMed",
            description="One universal network: segmentation, detection and classification chosen by a task token",
            version=__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            from monailabel.config import settings

            from lib.datastore.dicomweb import UniMedDICOMwebDatastore, label_to_seg

            if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
                return super().init_datastore()
            _use_unimed_seg_writer(label_to_seg, self.served_registry)
            modalities = self.conf.get("dicomweb_modalities", "CT,MR")
            logger.info(f"DICOMweb datastore {self.studies}, modalities {modalities}")
            return UniMedDICOMwebDatastore.from_settings(self.studies, modalities.split(","), self.served_registry)
        from lib.datastore.local import UniMedLocalDatastore
        from lib.safe_text import install_log_escaping

        install_log_escaping()  # ids come from requests: a newline in one must not forge a log line
        return UniMedLocalDatastore(self.studies, extensions=[f"*{s}" for s in IMAGE_SUFFIXES], auto_reload=True,
                                    registry=self.served_registry)

    def served_registry(self) -> LabelRegistry:
        """The label space of the checkpoint served now (taught labels too)."""
        return self.task_config.service.model.registry

    def init_infers(self):
        return self.task_config.infer()

    def init_trainers(self):
        return {self.task_config.name: self.task_config.trainer()}

    def init_strategies(self):
        return {"random": Random(), "first": First(), **self.task_config.strategy()}

    def init_scoring_methods(self):
        return self.task_config.scoring_method()

    def on_init_complete(self):
        super().on_init_complete()
        from monailabel.app import app as server  # the running server's FastAPI application

        from lib.datastore.local import UniMedLocalDatastore
        from lib.endpoints.datastore_routes import register_datastore_routes
        from lib.endpoints.infer_route import register_threaded_infer_route
        from lib.endpoints.results_page import register_results_page

        register_results_page(server, self.datastore)
        if isinstance(self.datastore(), UniMedLocalDatastore):
            register_datastore_routes(server, lambda: self)
        register_threaded_infer_route(server, int(self.conf.get("max_concurrent_infers", 1)), self.infer_uploads)
        register_train_route(server, lambda: list(self._trainers), lambda params: TrainRequest.parse(params, strict=True))
        self._secure_server(server)

    def _secure_server(self, server) -> None:
        """Login answers, checked model replacement, CORS for configured origins only, and no
        patient identifiers in the log (see the modules imported here)."""
        from lib.endpoints.auth_route import register_auth_route
        from lib.endpoints.cors import restrict_cors
        from lib.endpoints.model_route import register_model_routes
        from unimed.model_store import ModelStore

        register_auth_route(server)
        store = ModelStore(os.path.dirname(os.path.abspath(self.task_config.path)),
                           os.path.basename(self.task_config.path))
        register_model_routes(server, lambda: list(self._infers), self.task_config.service, store)
        restrict_cors(server, self.conf.get("cors_origins", ""))
        install_log_redaction()

    def info(self):
        meta = super().info()
        service_info = self.task_config.service.info()
        meta["unimed"] = service_info
        meta["unimed"]["active_learning"] = self.active_learning_status(service_info)
        meta["unimed"].update(self.label_space(service_info))
        return meta

    def label_space(self, service_info: dict) -> dict:
        """Every label of the served checkpoint with its colour, tasks, how many cases taught it
        (``taught_cases``: labels taught after pretraining) and how many final labels of the
        datastore mark it (``datastore_cases``); and the new labels that wait to be taught."""
        from lib.datastore.segments import label_case_counts, pending_labels

        registry = self.served_registry()
        datastore = self.datastore()
        counts = label_case_counts(datastore, registry)
        taught = service_info.get("taught_labels") or {}
        labels = [{"name": lab.name, "display": lab.display, "id": lab.id, "color": list(lab.color),
                   "tasks": sorted(t.value for t in lab.tasks), "taught": lab.name in taught,
                   "taught_cases": len(taught.get(lab.name, {}).get("cases", ())),
                   "datastore_cases": counts.get(lab.name, 0)} for lab in registry]
        return {"labels": labels, "pending_labels": [p.to_dict() for p in pending_labels(datastore, registry)]}

    def active_learning_status(self, service_info: dict) -> dict:
        """How many images the served version has scored, and how many new labels wait."""
        datastore = self.datastore()
        tag = model_tag(service_info)
        images = datastore.list_images()
        scored = sum(1 for i in images if (stored_score(datastore, i) or {}).get("model") == tag)
        return {
            "images": len(images),
            "scored_by_served_version": scored,
            "new_labels": len(labels_since(datastore, service_info)),
            "auto_train_after_labels": self.auto_retrain.after_labels,
            "training": training_active(),
        }

    def async_scoring(self, method, params=None):
        # one queued scoring run is enough: it reads the datastore and the model when it starts
        if any(t.get("status") == "SUBMITTED" for t in background_tasks("scoring")):
            return {}
        return super().async_scoring(method, params)

    def on_save_label(self, image_id, label_id):
        super().on_save_label(image_id, label_id)
        return {"auto_train": self.maybe_retrain()}

    def maybe_retrain(self) -> dict:
        """Start a fine-tuning run if enough new final labels arrived and none is running."""
        policy = self.auto_retrain
        with self._retrain_lock:
            new = labels_since(self.datastore(), self.task_config.service.info())
            state = {"started": False, "new_labels": len(new), "after_labels": policy.after_labels}
            if policy.after_labels == 0:
                return {**state, "reason": "auto-training is off (auto_train_labels 0)"}
            if len(new) < policy.after_labels:
                return {**state, "reason": f"waiting for {policy.after_labels - len(new)} more new label(s)"}
            if training_active():
                return {**state, "reason": "a training run is already running; it is not started twice"}
            name = self.task_config.name
            res = self.async_training(name, params={name: policy.params()}, enqueue=False)
            logger.info("%d new label(s): fine-tuning started (%s)", len(new), res)
            return {**state, "started": res is not None}

    def check_image(self, image, datastore: Datastore, session: dict | None = None) -> None:
        """An infer request reads a datastore image, the file sent with it (or with its MONAI Label
        session), or a server path under conf ``infer_path_roots`` (off by default); anything else
        is a 404 that says the same whether or not such a file exists (see
        :mod:`lib.infers.image_access`)."""
        if not isinstance(image, str) or not image.strip():
            raise HTTPException(400, "'image' must name an image of the datastore (or send the image as the file)")
        if self.infer_uploads.owns(image) or self.server_paths.allows(image) or self._session_image(image, session):
            return
        if os.path.isabs(image) or not datastore.get_image_uri(image):
            raise HTTPException(404, f"image {image!r} is not in the datastore")

    def _session_image(self, image: str, session: dict | None) -> bool:
        """Whether ``image`` is the image of the request's MONAI Label session (set by the endpoint
        from ``session_id``; ``params`` cannot set it)."""
        store = self.sessions()
        if not store or not isinstance(session, dict) or session.get("image") != image:
            return False
        root = Path(store.store_path).resolve()
        return root in Path(image).resolve().parents

    def infer(self, request, datastore=None):
        model = request.get("model")
        task = self._infers.get(model)
        if task is None:
            raise HTTPException(404, f"unknown model {model!r}; available models: {', '.join(self._infers)}")
        self.check_image(request.get("image"), datastore or self.datastore(), request.get("session"))
        try:
            if isinstance(task, UniMedInferTask):
                task.validate(request)
            return super().infer(request, datastore)
        except (UnknownTaskError, UnknownLabelError, InferRequestError, OutputError) as exc:
            raise HTTPException(400, scrub_paths(str(exc))) from exc
        except ClicksUnsupportedError as exc:
            raise HTTPException(409, str(exc)) from exc
        except VoxelLimitError as exc:
            raise HTTPException(413, scrub_paths(str(exc))) from exc
        except (ImageLoadError, DicomSeriesError, SegError) as exc:
            raise HTTPException(422, scrub_paths(str(exc))) from exc
        except HTTPException:
            raise
        except Exception as exc:
            logger.exception("inference failed")
            raise HTTPException(500, f"inference failed: {type(exc).__name__}: {scrub_paths(str(exc))}") from exc


def _use_unimed_seg_writer(label_to_seg, registry: Callable[[], LabelRegistry]) -> None:
    """Make ``POST /infer/{model}?output=dicom_seg`` write its SEG with UniMed's writer.

    MONAI Label's infer endpoint converts the result with dcmqi's ``itkimage2segimage``, a
    binary it downloads from GitHub; the endpoint offers no hook, so its converter is replaced
    by one with the same signature, which names segments from the served checkpoint's labels
    (``registry``).
    """
    import monailabel.endpoints.infer as endpoint

    def nifti_to_dicom_seg(series_dir, label, label_info, file_ext="*", use_itk=True) -> str:
        names = [info["name"] for info in label_info or [] if isinstance(info, dict) and info.get("name")]
        try:
            return label_to_seg(series_dir, label, names, registry=registry())
        except (SegError, DicomSeriesError) as exc:  # called after the app's infer: map its errors here
            raise HTTPException(422, str(exc)) from exc

    endpoint.nifti_to_dicom_seg = nifti_to_dicom_seg
