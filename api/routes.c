#include "api.h"

const rt_route rt_routes[] = {
    {"GET", "/healthz", h_healthz, 0},
    {"GET", "/readyz", h_readyz, 0},
    {"GET", "/metrics", h_metrics, 0},
    {"GET", "/", h_static, 0},
    {"GET", "/static/{file}", h_static, 0},
    {"POST", "/v1/datasets", h_dataset_create, R_AUTH | R_UPLOAD},
    {"GET", "/v1/datasets", h_dataset_list, R_AUTH},
    {"GET", "/v1/datasets/{id}", h_dataset_get, R_AUTH},
    {"DELETE", "/v1/datasets/{id}", h_dataset_delete, R_AUTH},
    {"POST", "/v1/backbones", h_backbone_create, R_AUTH | R_UPLOAD},
    {"GET", "/v1/backbones", h_backbone_list, R_AUTH},
    {"GET", "/v1/backbones/{id}", h_backbone_get, R_AUTH},
    {"DELETE", "/v1/backbones/{id}", h_backbone_delete, R_AUTH},
    {"GET", "/v1/backbones/{id}/weights", h_backbone_weights, R_AUTH},
    {"POST", "/v1/transfers", h_transfer_create, R_AUTH},
    {"GET", "/v1/transfers", h_transfer_list, R_AUTH},
    {"GET", "/v1/transfers/{id}", h_transfer_get, R_AUTH},
    {"POST", "/v1/transfers/{id}/cancel", h_transfer_cancel, R_AUTH},
    {"GET", "/v1/transfers/{id}/report", h_transfer_report, R_AUTH},
    {"GET", "/v1/transfers/{id}/gradients", h_transfer_gradients, R_AUTH},
    {"GET", "/v1/transfers/{id}/head", h_transfer_head, R_AUTH},
    {"POST", "/v1/transfers/{id}/links", h_link_create, R_AUTH},
    /* no key: the token is the credential (links.c checks its signature and expiry) */
    {"GET", "/v1/links/{token}", h_link_get, 0},
    {0, 0, 0, 0},
};
